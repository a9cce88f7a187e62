//! ward: the command line for operators, model owners and clients of wardd.
//!
//! Exit codes: 0 success, 1 the check failed (not serving, broken audit log, unreachable),
//! 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod attested;
mod chat;
mod gpu;
mod image;
mod kbs;
mod model;
mod progress;
mod proxy;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ward_agent::audit;
use ward_agent::client::HealthClient;
use ward_attester::kbs::admin::AdminClaims;
use ward_protos::ward_health::ServingStatus;

#[derive(Parser)]
#[command(
    name = "ward",
    version,
    about = "ward: attested secrets, images and inference for confidential VMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask wardd whether it is serving; exits 0 only when it is.
    Health {
        /// wardd's address: unix:///path or vsock://CID:PORT.
        #[arg(long, default_value = "unix:///run/ward/ward.sock")]
        addr: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Collect TEE evidence for the given report data and print it, or (--explain) parse saved
    /// evidence and print what it says.
    Evidence {
        /// auto, snp, tdx, az-snp-vtpm, az-tdx-vtpm, or sample (development).
        #[arg(long, default_value = "auto")]
        tee: String,
        /// Report data as hex, at most 64 bytes.
        #[arg(long, default_value = "", conflicts_with = "explain")]
        report_data: String,
        /// Also collect NVIDIA GPU evidence (the first 32 bytes of the report data, zero-padded,
        /// are the GPU nonce).
        #[arg(long, conflicts_with = "explain")]
        with_gpus: bool,
        /// Explain a saved SNP report, TDX quote, CCEL event log, or evidence JSON.
        #[arg(long, value_name = "FILE")]
        explain: Option<PathBuf>,
        /// With --explain: check the SNP report's signature against this VCEK/VLEK (DER); a bad
        /// signature exits 1.
        #[arg(long, value_name = "DER", requires = "explain")]
        vcek: Option<PathBuf>,
    },
    /// Show each NVIDIA GPU's confidential-computing state, as NVML reports it.
    Gpu,
    /// Run the KBS handshake in this process and print the token's claims.
    Attest {
        /// The KBS base URL.
        #[arg(long)]
        kbs: String,
        #[arg(long, default_value = "auto")]
        tee: String,
        /// PEM CA certificate(s) for the KBS's TLS certificate.
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Use an RSA TEE key (RSA-OAEP-256) instead of EC P-256.
        #[arg(long)]
        rsa: bool,
    },
    /// Fetch a KBS resource: directly (--kbs) or through a running wardd (--addr).
    GetResource {
        /// kbs:///repo/type/tag
        uri: String,
        #[arg(long, conflicts_with = "addr", required_unless_present = "addr")]
        kbs: Option<String>,
        /// wardd's address, to go through its GetResource API.
        #[arg(long)]
        addr: Option<String>,
        #[arg(long, default_value = "auto")]
        tee: String,
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Write the resource to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pull an image into a bundle (rootfs + config.json), verifying and decrypting in memory:
    /// on its own, or through a running wardd's ImagePull API (--addr).
    Pull {
        image: String,
        #[arg(long)]
        bundle: PathBuf,
        /// wardd's address: pull through its CoCo ImagePull API instead of in this process.
        #[arg(long, conflicts_with_all = ["decryption_keys", "insecure", "kbs", "policy", "signed", "mirrors"])]
        addr: Option<String>,
        /// Private key (PEM) for JWE-encrypted layers; repeatable.
        #[arg(long = "decryption-key")]
        decryption_keys: Vec<PathBuf>,
        /// Registry (host[:port]) to reach over plain HTTP; repeatable.
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
        /// KBS for key-provider packets (the KEK is released after attestation).
        #[arg(long)]
        kbs: Option<String>,
        #[arg(long, default_value = "auto")]
        tee: String,
        /// Keep verified layer blobs in this directory for later pulls (default: keep none).
        #[arg(long)]
        blob_cache: Option<PathBuf>,
        /// Layers downloading at once, each a bounded window ahead of the unpacker.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// Signature policy: `accept`, `reject` (with --signed scopes), or a containers
        /// policy.json file.
        #[arg(long, default_value = "accept")]
        policy: String,
        /// SCOPE=KEY: images under SCOPE need a sigstore (cosign) signature by the public key
        /// in file KEY (or held by the KBS at kbs:///...); repeatable.
        #[arg(long = "signed")]
        signed: Vec<String>,
        /// REGISTRY=MIRROR: fetch REGISTRY's images from MIRROR first; repeatable.
        #[arg(long = "mirror")]
        mirrors: Vec<String>,
        /// No progress bars, only the summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Owner-side image operations.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Ask a model served by wardd, with the prompt encrypted end to end to a key the TEE's
    /// attestation vouches for (checked first; a mismatch is an error naming what differed).
    Chat {
        prompt: String,
        /// The OpenAI-compatible base URL (`http://HOST:PORT/v1`).
        #[arg(long)]
        url: String,
        #[arg(long)]
        model: String,
        #[command(flatten)]
        trust: attested::TrustArgs,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Sampling temperature; 0 (the default) is greedy and reproducible.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Sign the request with this Ed25519 key (PKCS#8 PEM, `ward client-key new`): the
        /// identity a model's access policy grants.
        #[arg(long, value_name = "PEM")]
        client_key: Option<PathBuf>,
    },
    /// Serve a plain OpenAI-compatible API on loopback whose every request leaves encrypted end
    /// to end to the key the server's verified attestation vouches for (checked at start, on a
    /// key change and every --reattest-secs; refused, every request is answered with an error
    /// and nothing is sent).
    Proxy {
        /// Where to serve the plain API (loopback only, unless --listen-any).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Allow --listen on an address other than loopback (the plain API is then reachable
        /// by others).
        #[arg(long)]
        listen_any: bool,
        /// The server's OpenAI-compatible base URL (`https://HOST/v1`).
        #[arg(long)]
        url: String,
        #[command(flatten)]
        trust: attested::TrustArgs,
        /// Fetch and verify the attestation again this often, in seconds.
        #[arg(long, default_value_t = 300)]
        reattest_secs: u64,
        /// Sign every request with this Ed25519 key (PKCS#8 PEM, `ward client-key new`).
        #[arg(long, value_name = "PEM")]
        client_key: Option<PathBuf>,
    },
    /// A client's Ed25519 key, whose name (`ed25519:…`) a model owner grants in a policy.
    ClientKey {
        #[command(subcommand)]
        command: ClientKeyCommand,
    },
    /// Owner-side sealed-model operations: seal, push, upload the KEK, check offline.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Work with the hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Encrypt every layer of an OCI image layout in place, for JWE recipients and/or a KEK held
    /// by the KBS (CoCo key-provider packets).
    Encrypt {
        /// OCI-LAYOUT-DIR:TAG
        image: String,
        /// Recipient public key (PEM); repeatable.
        #[arg(long = "jwe")]
        jwe: Vec<PathBuf>,
        /// The KBS resource URI of the KEK (kbs:///repo/type/tag).
        #[arg(long)]
        kid: Option<String>,
        /// The 32-byte KEK, as uploaded to the KBS under --kid.
        #[arg(long)]
        kek_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Seal every file of a model directory into an OCI layout (chunked AES-256-GCM under a
    /// KEK the KBS will hold); prints the policy entry that pins the plaintext digests.
    Seal {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The KBS resource URI of the KEK (kbs:///repo/type/tag).
        #[arg(long)]
        kid: String,
        /// The 32-byte KEK; a new random one is written there (0600) when the file is absent.
        #[arg(long)]
        kek_file: PathBuf,
        /// Chunk size in bytes.
        #[arg(long, default_value_t = ward_image::sealed::header::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
    },
    /// Push a sealed layout to a registry as an OCI artifact.
    Push {
        sealed: PathBuf,
        reference: String,
        /// Registry (host[:port]) reached over plain HTTP; repeatable.
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
    },
    /// Upload the KEK, or the model's access policy (`docs/model-policy.md`, checked first), to
    /// Trustee with the admin API (POST /kbs/v0/resource/..., admin JWT).
    KbsPut {
        #[arg(long)]
        kbs: String,
        /// The operator's Ed25519 private key (PKCS#8 PEM), to sign an admin token here.
        #[arg(
            long,
            required_unless_present = "admin_token",
            conflicts_with = "admin_token"
        )]
        admin_key: Option<PathBuf>,
        /// A ready-made admin token (a file holding the JWT), as Trustee's kbs-client takes.
        #[arg(long)]
        admin_token: Option<PathBuf>,
        /// The `role` claim of a token signed here (Trustee's ACL maps roles to endpoints).
        #[arg(long, default_value = "admin")]
        role: String,
        /// The `iss` claim, for an identity provider configured with an issuer.
        #[arg(long)]
        issuer: Option<String>,
        /// The `aud` claim, for an identity provider configured with an audience.
        #[arg(long)]
        audience: Option<String>,
        /// The resource URI (`kbs:///repo/type/tag`).
        #[arg(long, alias = "uri")]
        kid: String,
        #[arg(long, required_unless_present = "policy_file")]
        kek_file: Option<PathBuf>,
        /// A model access policy (JSON or TOML), uploaded after it parses as wardd reads it.
        #[arg(long, conflicts_with = "kek_file")]
        policy_file: Option<PathBuf>,
        #[arg(long)]
        cacert: Option<PathBuf>,
    },
    /// Check a sealed layout offline: every file opened and verified, then written; any
    /// tampering exits non-zero with nothing written.
    Unseal {
        sealed: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        kek_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClientKeyCommand {
    /// Make a key, written as PKCS#8 PEM (mode 0600); prints its name.
    New { out: PathBuf },
    /// Print the name of a key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes).
    Id { file: PathBuf },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that no line was edited, dropped or reordered; prints the head hash.
    Verify {
        file: PathBuf,
        /// Also require that the chain ends at this hash (as reported by wardd), which catches
        /// lines cut off the end.
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
    },
    /// Per client and model: requests served and refused, prompt and completion tokens, summed
    /// from the verified log (nothing is reported from a log that does not verify).
    Usage {
        file: PathBuf,
        /// Only entries at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only this client (`ed25519:…`, `uid:N`, or `-` for requests without one).
        #[arg(long)]
        client: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // SAFETY: called first thing, before any other thread exists; restoring the default
    // disposition makes `ward ... | head` end quietly instead of failing on a closed pipe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ward: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs one command; `Ok(false)` means the check ran and failed.
fn run(cli: Cli) -> anyhow::Result<bool> {
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    match cli.command {
        Command::Evidence {
            explain: Some(file),
            vcek,
            ..
        } => kbs::explain(&file, vcek.as_deref()),
        Command::Evidence {
            tee,
            report_data,
            with_gpus,
            ..
        } => rt()?.block_on(kbs::evidence(
            kbs::parse_tee(&tee)?,
            &report_data,
            with_gpus,
        )),
        Command::Gpu => gpu::show(),
        Command::Pull {
            image: img,
            bundle,
            addr: Some(addr),
            ..
        } => rt()?.block_on(image::pull_via_wardd(&addr, &img, &bundle)),
        Command::Pull {
            image: img,
            bundle,
            addr: None,
            decryption_keys,
            insecure,
            kbs: url,
            tee,
            blob_cache,
            concurrency,
            policy,
            signed,
            mirrors,
            quiet,
        } => rt()?.block_on(image::pull(image::PullArgs {
            image: &img,
            bundle: &bundle,
            keys: &decryption_keys,
            insecure: &insecure,
            kbs: url.as_deref(),
            tee: kbs::parse_tee(&tee)?,
            blob_cache: blob_cache.as_deref(),
            concurrency: usize::from(concurrency),
            policy: &policy,
            signed: &signed,
            mirrors: &mirrors,
            quiet,
        })),
        Command::Image {
            command:
                ImageCommand::Encrypt {
                    image: img,
                    jwe,
                    kid,
                    kek_file,
                },
        } => image::encrypt(&img, &jwe, kid.as_deref(), kek_file.as_deref()),
        Command::Chat {
            prompt,
            url,
            model,
            trust,
            max_tokens,
            temperature,
            client_key,
        } => rt()?.block_on(chat::chat(chat::ChatArgs {
            url: &url,
            model: &model,
            prompt: &prompt,
            trust: attested::TrustArgs {
                who: "ward chat",
                ..trust
            },
            max_tokens,
            temperature,
            client_key: client_key.as_deref().map(read_client_key).transpose()?,
        })),
        Command::Proxy {
            listen,
            listen_any,
            url,
            trust,
            reattest_secs,
            client_key,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(proxy::proxy(proxy::ProxyArgs {
                listen,
                listen_any,
                url,
                trust: attested::TrustArgs {
                    who: "ward proxy",
                    ..trust
                },
                reattest_secs,
                client_key: client_key.as_deref().map(read_client_key).transpose()?,
            })),
        Command::ClientKey {
            command: ClientKeyCommand::New { out },
        } => {
            let key = ward_e2e::ClientKey::generate();
            let pem = key.to_pkcs8_pem()?;
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .and_then(|mut f| f.write_all(pem.as_bytes()))
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("{}", key.id());
            Ok(true)
        }
        Command::ClientKey {
            command: ClientKeyCommand::Id { file },
        } => {
            println!("{}", read_client_key(&file)?.id());
            Ok(true)
        }
        Command::Model { command } => match command {
            ModelCommand::Seal {
                dir,
                out,
                kid,
                kek_file,
                chunk_size,
            } => model::seal(&dir, &out, &kid, &kek_file, chunk_size),
            ModelCommand::Push {
                sealed,
                reference,
                insecure,
            } => rt()?.block_on(model::push(&sealed, &reference, &insecure)),
            ModelCommand::KbsPut {
                kbs: url,
                admin_key,
                admin_token,
                role,
                issuer,
                audience,
                kid,
                kek_file,
                policy_file,
                cacert,
            } => rt()?.block_on(model::kbs_put(
                &url,
                model::AdminSource {
                    key: admin_key.as_deref(),
                    token: admin_token.as_deref(),
                    claims: AdminClaims {
                        role,
                        issuer,
                        audience,
                    },
                },
                &kid,
                match (&kek_file, &policy_file) {
                    (_, Some(p)) => model::Upload::Policy(p),
                    (Some(k), None) => model::Upload::Kek(k),
                    (None, None) => anyhow::bail!("--kek-file or --policy-file is required"),
                },
                cacert.as_deref(),
            )),
            ModelCommand::Unseal {
                sealed,
                out,
                kek_file,
            } => model::unseal(&sealed, &out, &kek_file),
        },
        Command::Attest {
            kbs: url,
            tee,
            cacert,
            rsa,
        } => rt()?.block_on(kbs::attest(
            &url,
            kbs::parse_tee(&tee)?,
            cacert.as_deref(),
            rsa,
        )),
        Command::GetResource {
            uri,
            kbs: url,
            addr,
            tee,
            cacert,
            out,
        } => {
            let tee = kbs::parse_tee(&tee)?;
            let source = match (&url, &addr) {
                (Some(url), _) => kbs::Source::Kbs {
                    url,
                    tee,
                    cacert: cacert.as_deref(),
                },
                (None, Some(addr)) => kbs::Source::Wardd { addr },
                (None, None) => anyhow::bail!("give --kbs URL or --addr ADDR"),
            };
            rt()?.block_on(kbs::get_resource(source, &uri, out.as_ref()))
        }
        Command::Health { addr, timeout } => {
            rt()?.block_on(health(&addr, Duration::from_secs(timeout)))
        }
        Command::Audit {
            command: AuditCommand::Verify { file, expect_head },
        } => audit_verify(&file, expect_head.as_deref()),
        Command::Audit {
            command:
                AuditCommand::Usage {
                    file,
                    since,
                    client,
                    json,
                },
        } => audit_usage(&file, since.as_deref(), client, json),
    }
}

async fn health(addr: &str, timeout: Duration) -> anyhow::Result<bool> {
    let call = async {
        let client = HealthClient::connect(addr, timeout).await?;
        let check = client.check().await?;
        let version = client.version().await?;
        anyhow::Ok((check, version))
    };
    let (check, version) = tokio::time::timeout(timeout, call)
        .await
        .with_context(|| format!("{addr} did not answer within {timeout:?}"))??;
    let serving = check.status.enum_value() == Ok(ServingStatus::SERVING_STATUS_SERVING);
    println!(
        "{} wardd {} mode={} uptime={:.1}s addr={addr}",
        if serving { "SERVING" } else { "NOT_SERVING" },
        check.version,
        check.mode,
        Duration::from_millis(check.uptime_ms).as_secs_f64(),
    );
    println!("services: {}", version.services.join(" "));
    Ok(serving)
}

fn audit_verify(file: &std::path::Path, expect_head: Option<&str>) -> anyhow::Result<bool> {
    match audit::verify(file) {
        Ok(head) => {
            if let Some(want) = expect_head
                && !want.eq_ignore_ascii_case(&head.hash)
            {
                println!(
                    "BROKEN {}: the chain ends at {} after {} entries, not at {want} \
                     (lines were cut off the end, or this is another log)",
                    file.display(),
                    head.hash,
                    head.entries
                );
                return Ok(false);
            }
            println!(
                "OK {}: {} entries, head {}",
                file.display(),
                head.entries,
                head.hash
            );
            Ok(true)
        }
        Err(audit::VerifyError::Read(e)) => {
            Err(e).with_context(|| format!("cannot read {}", file.display()))
        }
        Err(e) => {
            println!("BROKEN {}: {e}", file.display());
            Ok(false)
        }
    }
}

fn audit_usage(
    file: &std::path::Path,
    since: Option<&str>,
    client: Option<String>,
    json: bool,
) -> anyhow::Result<bool> {
    let since = since
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("--since {s}: not an RFC 3339 time"))
        })
        .transpose()?;
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    match audit::usage::usage(reader, &audit::usage::UsageFilter { since, client }) {
        Ok(report) if json => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(true)
        }
        Ok(report) => {
            print!("{}", audit::usage::table(&report));
            Ok(true)
        }
        Err(audit::VerifyError::Read(e)) => {
            Err(e).with_context(|| format!("cannot read {}", file.display()))
        }
        Err(e) => {
            println!(
                "BROKEN {}: {e} (no usage is reported from a broken log)",
                file.display()
            );
            Ok(false)
        }
    }
}

fn read_client_key(path: &std::path::Path) -> anyhow::Result<ward_e2e::ClientKey> {
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    ward_e2e::ClientKey::from_pkcs8_pem(&pem).with_context(|| path.display().to_string())
}
