//! keyrotor: generates and rotates JWT signing keys in Kubernetes.
pub mod leader;
pub mod metrics;
