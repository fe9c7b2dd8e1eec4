//! One module per `ferry` subcommand.

pub mod agent;
pub mod cleanup;
pub mod conntrack;
pub mod kube_proxy_config;
pub mod kube_proxy_rules;
pub mod monitor;
pub mod mount_bpffs;
pub mod preflight;
pub mod services;
pub mod stats;
pub mod trace;
