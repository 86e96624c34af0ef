//! The fuzz targets; each module exports one [`crate::Target`] as `TARGET`.

pub mod config;
pub mod cron;
pub mod frame;
pub mod redis_reply;
pub mod stream;
