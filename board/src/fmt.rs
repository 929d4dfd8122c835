//! Logging: through defmt with the `defmt` feature, else nothing (the arguments are
//! still evaluated, so a build without logs warns about the same things).

macro_rules! log_info {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::info!($fmt $(, $arg)*);
        #[cfg(not(feature = "defmt"))]
        let _ = ($(&$arg,)*);
    }};
}

macro_rules! log_warn {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::warn!($fmt $(, $arg)*);
        #[cfg(not(feature = "defmt"))]
        let _ = ($(&$arg,)*);
    }};
}

pub(crate) use {log_info, log_warn};
