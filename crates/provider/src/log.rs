//! Provider logging: silent unless `FLOWVERBS_LOG` is set (error, warn,
//! info, debug, trace, or 1-5); messages go to stderr.

use std::sync::OnceLock;

pub fn level() -> u8 {
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| match std::env::var("FLOWVERBS_LOG").as_deref() {
        Ok("error") | Ok("1") => 1,
        Ok("warn") | Ok("2") => 2,
        Ok("info") | Ok("3") => 3,
        Ok("debug") | Ok("4") => 4,
        Ok("trace") | Ok("5") => 5,
        _ => 0,
    })
}

#[macro_export]
macro_rules! fv_log {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::log::level() >= $lvl {
            eprintln!("flowverbs[{}]: {}", std::process::id(), format_args!($($arg)*));
        }
    };
}
