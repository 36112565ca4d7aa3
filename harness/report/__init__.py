"""The leaderboard's parts: reading results, costs, renderers (terminal, Markdown, CSV, LaTeX, HTML) and plots.

leaderboard.py holds the command (``harness leaderboard``); ``leaderboard.py`` at the repository root is a thin
entry over it.
"""
