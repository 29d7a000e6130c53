//! Backend library.
