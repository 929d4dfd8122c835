//! The Glint runtime.
