"""`aot eval`: the paper's yardsticks (Open LLM Leaderboard tasks through lm-eval, AlpacaEval with an
LLM judge) and AOT's own (reward dominance), each writing one eval artifact (DESIGN.md section 7)."""
