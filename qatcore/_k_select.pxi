# Percentile order statistics by selection (no copy of the batch).  See select_order_stats.
