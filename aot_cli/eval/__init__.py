"""`aot eval`: the paper's yardsticks and AOT's own, one sub-command per suite, each writing one eval
artifact (docs/architecture.md).

- :mod:`.config`: every sub-command's options (light);
- :mod:`.source`: what MODEL names (a merged model, a run, a hub id);
- :mod:`.lm_eval_suites` (``openllm``, ``tasks``) with :mod:`.leaderboard` (the leaderboards' scores);
- :mod:`.alpaca` (``alpaca``) with :mod:`.generate` and :mod:`.judge`;
- :mod:`.dominance` (``dominance``) with :mod:`.quantiles` and :mod:`.dominance_legend`;
- :mod:`.report`: results.json, report.md, the manifest and the terminal table.
"""
