//! Upstream pools: bulkhead, breaker, selection, outlier ejection, active health (being written).
