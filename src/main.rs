//! The keyrotor command line: `keyrotor crd` prints the CRD, `keyrotor run` runs the
//! operator.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyrotor::api::JwtSigningKey;
use kube::CustomResourceExt;

#[derive(Parser)]
#[command(
    name = "keyrotor",
    version,
    about = "Generates and rotates JWT signing keys in Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the JwtSigningKey CustomResourceDefinition as YAML.
    Crd,
}

fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(&JwtSigningKey::crd())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("keyrotor: cannot render the CRD: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    /// `crds/jwtsigningkey.yaml` is what `keyrotor crd` prints; regenerate it with
    /// `cargo run -q -- crd > crds/jwtsigningkey.yaml` after changing `src/api.rs`.
    #[test]
    fn checked_in_crd_matches_the_code() {
        let generated = super::crd_yaml().expect("CRD renders");
        let checked_in = include_str!("../crds/jwtsigningkey.yaml");
        assert!(
            generated == checked_in,
            "crds/jwtsigningkey.yaml is out of date: run `cargo run -q -- crd > crds/jwtsigningkey.yaml`"
        );
    }
}
