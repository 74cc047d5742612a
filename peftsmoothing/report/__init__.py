"""Reading what certification wrote: the log format, certified accuracy, paired comparisons and
plots.
"""
