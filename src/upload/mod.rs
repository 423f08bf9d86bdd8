//! Upload bridge (being written).
