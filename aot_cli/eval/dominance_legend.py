"""What each row of a dominance report compares, in words: shared by the report, the terminal
table and ``aot compare`` (which must not import the scoring code to print a table)."""

from __future__ import annotations

# What each row of the scores compares ("first vs second"), as the report and the terminal table say it.
COMPARISONS = {
    True: {"before": "the reference (before training): margins log ref(chosen)/ref(rejected) vs 0",
           "after": "the policy (after training): margins log pi(chosen)/pi(rejected) vs 0",
           "implicit_rewards": "implicit rewards log pi/ref of chosen vs rejected (paper Fig. 1a)",
           "margins": "policy margins vs reference margins (paper Fig. 1b; what paired AOT trains)"},
    False: {"before": "the reference (before training): log ref(y) of positives vs negatives",
            "after": "the policy (after training): log pi(y) of positives vs negatives",
            "implicit_rewards": "implicit rewards log pi/ref of positives vs negatives (paper Fig. 1a; "
                                "what unpaired AOT trains)"},
}
METRICS_LEGEND = ("all scaled by beta; accuracy: share where the first beats the second (unpaired: AUC); "
                  "violation fraction / area: quantile levels where the first is below the second")
# The almost-dominance test's numbers (aot_cli.eval.stats), shown as a second table, and their headers.
TEST_COLUMNS = {"violation_ratio": "violation ratio (1st)", "p_value": "p-value (1st)",
                "violation_ratio_2nd": "violation ratio (2nd)", "p_value_2nd": "p-value (2nd)"}
TESTS_LEGEND = ("violation ratio: the share of the squared gap between the quantile curves where the first is "
                "below the second (0: it dominates at every level, 0.5: no order, 1: reversed); 2nd: the same on "
                "integrated quantile curves (second-order dominance); p-value: one-sided percentile-bootstrap test of "
                "H0: ratio >= eps0 (small: the first almost dominates the second)")
