//! Logging setup: `tracing` events as text or JSON on standard error.

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;

/// Installs the global subscriber.
pub fn init(level: tracing::Level, json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::from_level(level))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Err(error) = installed {
        eprintln!("warning: logging was already set up: {error}");
    }
}
