"""The leaderboard's parts: reading results, costs, renderers (terminal, Markdown, CSV, LaTeX, HTML) and plots.

``leaderboard.py`` at the repository root is the entry point.
"""
