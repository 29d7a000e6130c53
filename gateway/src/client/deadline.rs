//! Whole-request-head deadline (being written).
