//! keyrotor: generates and rotates JWT signing keys in Kubernetes.
pub mod api;
pub mod bundle;
pub mod controller;
pub mod jwks;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod ring;
pub mod secret;
