"""``python leaderboard.py --results results``: the leaderboard from a results folder.

A thin entry over ``harness.report.leaderboard`` (the same as ``harness leaderboard``); see that module for the
inputs, the significance tests and the outputs.
"""

import sys

from harness.report.leaderboard import main

if __name__ == "__main__":
    sys.exit(main())
