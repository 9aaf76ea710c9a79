//! dt-users: the user service of Dev Talk.
//!
//! `config` loads the settings; `startup` builds the application from them; `service` holds
//! the use-cases; `http` exposes them; `sessions` and `security` are the pieces the
//! use-cases rely on.

#![forbid(unsafe_code)]

pub mod config;
pub mod email;
pub mod events;
pub mod federation;
pub mod health;
pub mod http;
pub mod jobs;
#[cfg(test)]
mod layers;
pub mod runner;
pub mod security;
pub mod service;
pub mod sessions;
pub mod startup;
pub mod telemetry;

pub use dt_users_domain as domain;
pub use dt_users_store as store;
