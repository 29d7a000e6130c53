//! Gateway configuration: YAML → validated model.

pub mod model;
