//! Glint for hosts in other languages: the C ABI ([`c_api`], header `include/glint.h`)
//! and, with the `jni` feature, the JNI binding of the Java package `com.glint`
//! (`java/com/glint/`). Both are thin layers over [`host`], which keeps the loaded
//! models and sessions behind checked handles ([`registry`]) and turns every failure,
//! panics included, into a [`host::HostError`].

pub mod c_api;
pub mod host;
#[cfg(feature = "jni")]
pub mod jni;
pub mod registry;
