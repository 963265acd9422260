//! `ferry-signer keygen`: a new release signing key, age-encrypted at rest.

use std::path::PathBuf;

use age::secrecy::SecretString;
use anyhow::{bail, Result};
use ferry_signer::keys::{self, KeyError, Protection, SigningKey};

use super::PASSPHRASE_ENV;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the encrypted private key; the public key goes to OUT.pub.
    #[arg(long, value_name = "KEY")]
    out: PathBuf,
    /// Comment stored in the key.
    #[arg(long, default_value = "ferry-release")]
    comment: String,
    /// Encrypt to this age recipient (age1…); repeatable. Without it the key
    /// is encrypted under a passphrase from FERRY_SIGNER_PASSPHRASE or the terminal.
    #[arg(long = "recipient", value_name = "AGE_RECIPIENT")]
    recipients: Vec<String>,
    /// Principal for the printed allowed_signers line.
    #[arg(long, default_value = "ferry-release")]
    principal: String,
}

pub fn run(args: Args) -> Result<()> {
    let protection = if args.recipients.is_empty() {
        Protection::Passphrase(new_passphrase()?)
    } else {
        Protection::Recipients(
            args.recipients
                .iter()
                .map(|r| keys::parse_recipient(r))
                .collect::<Result<_, _>>()?,
        )
    };
    let key = SigningKey::generate(&args.comment)?;
    let pub_path = key.write_new(&args.out, &protection)?;
    eprintln!(
        "wrote {} (age-encrypted) and {}",
        args.out.display(),
        pub_path.display()
    );
    eprintln!("allowed_signers line for your hosts:");
    println!("{}", key.allowed_signers_line(&args.principal));
    Ok(())
}

fn new_passphrase() -> Result<SecretString> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        if p.is_empty() {
            bail!("{PASSPHRASE_ENV} is empty");
        }
        return Ok(p.into());
    }
    let first =
        rpassword::prompt_password("passphrase for the new key: ").map_err(|_| KeyError::NoPassphrase)?;
    let second = rpassword::prompt_password("again: ").map_err(|_| KeyError::NoPassphrase)?;
    if first != second {
        bail!("the passphrases differ; nothing was written");
    }
    if first.is_empty() {
        bail!("an empty passphrase protects nothing; nothing was written");
    }
    Ok(first.into())
}
