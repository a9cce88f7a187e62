//! wardd: the agent daemon inside a confidential VM.
//!
//! Exit codes (when not PID 1): 0 after a clean stop, 1 on a runtime error, 2 on a config error.
//! As PID 1 it never exits: every end is a sync and a power-off.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ward_agent::config::{Config, DEFAULT_CONFIG_PATH, RawConfig};
use ward_agent::init::MountReport;
use ward_agent::services::Mode;
use ward_agent::{daemon, init, logging};

#[derive(Parser)]
#[command(
    name = "wardd",
    version,
    about = "ward's agent daemon for confidential VMs"
)]
struct Args {
    /// Config file (TOML). When absent at the default path, built-in defaults apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where to read `ward.*` kernel command-line overrides from.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// Validate the configuration, print the effective listeners, and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the built-in default config as TOML and exit.
    #[arg(long)]
    print_default_config: bool,
}

/// How the process ends; mapped to an exit code (or a power-off) in one place.
enum End {
    Clean,
    ConfigError(String),
    Fatal(String),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let pid1 = init::is_pid1();
    if pid1 {
        init::install_panic_hook();
    }
    let end = run(&args, pid1);
    if pid1 {
        let reason = match &end {
            End::Clean => "stopped".to_string(),
            End::ConfigError(e) => format!("config error: {e}"),
            End::Fatal(e) => e.clone(),
        };
        init::terminate_all(Duration::from_secs(2));
        init::power_off(&reason);
    }
    match end {
        End::Clean => ExitCode::SUCCESS,
        End::ConfigError(e) => {
            eprintln!("wardd: config error: {e}");
            ExitCode::from(2)
        }
        End::Fatal(e) => {
            eprintln!("wardd: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args, pid1: bool) -> End {
    if args.print_default_config {
        return match RawConfig::default().to_toml() {
            Ok(text) => {
                print!("{text}");
                End::Clean
            }
            Err(e) => End::Fatal(format!("cannot print the defaults: {e}")),
        };
    }
    // As PID 1 nothing is mounted yet, not even /proc (where the command line is); then the
    // initrd's kernel modules (virtio, vsock...) are loaded, before anything needs a device.
    let (mounts, modules) = if pid1 {
        let mounts = match init::mount_early() {
            Ok(report) => report,
            Err(e) => return End::Fatal(format!("early mounts failed: {e}")),
        };
        let modules = match init::load_modules(std::path::Path::new(init::MODULES_LIST)) {
            Ok(report) => report,
            Err(e) => return End::Fatal(format!("kernel modules: {e}")),
        };
        // A module may have brought a filesystem the first pass found absent (configfs).
        let mounts = if modules.loaded.is_empty() {
            mounts
        } else {
            match init::mount_early() {
                Ok(again) => MountReport {
                    mounted: [mounts.mounted, again.mounted].concat(),
                    already: mounts.already,
                    absent: again.absent,
                },
                Err(e) => return End::Fatal(format!("early mounts after modules failed: {e}")),
            }
        };
        (Some(mounts), Some(modules))
    } else {
        (None, None)
    };

    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let cmdline = std::fs::read_to_string(&args.cmdline).ok();
    let (config, unknown) = match Config::load(&path, explicit, cmdline.as_deref()) {
        Ok(c) => c,
        Err(e) => return End::ConfigError(e.to_string()),
    };
    if args.check_config {
        for l in &config.listeners {
            let services: Vec<_> = l.services.iter().map(|s| s.config_name()).collect();
            println!("{} {}", l.addr, services.join(","));
        }
        return End::Clean;
    }

    if let Some(n) = config.inference_threads {
        // candle sizes its thread pools from these variables when it first runs a kernel.
        // SAFETY: wardd has no other thread yet: the config was read on this one, and logging,
        // the async runtime and every inference thread start after this point, so nothing can
        // read the environment concurrently.
        unsafe {
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
    logging::init(&config.log_filter, config.log_format);
    for key in &unknown {
        tracing::warn!(key, "unknown kernel command-line key ignored");
    }
    if let Some(report) = mounts {
        tracing::info!(
            mounted = ?report.mounted,
            already = ?report.already,
            absent = ?report.absent,
            "early mounts"
        );
    }
    if let Some(report) = modules
        && report != init::ModuleReport::default()
    {
        tracing::info!(
            loaded = ?report.loaded,
            already = ?report.already,
            no_device = ?report.no_device,
            "kernel modules"
        );
    }
    if pid1 {
        if let Err(e) = init::loopback_up() {
            tracing::warn!(error = %e, "cannot bring up lo");
        }
        if let Some(net) = &config.net {
            match init::configure_net(net) {
                Ok(()) => tracing::info!(%net, "network configured"),
                Err(e) => return End::Fatal(format!("ward.net={net}: {e}")),
            }
        }
    } else if let Some(net) = &config.net {
        tracing::warn!(%net, "ward.net is applied in PID-1 mode only; ignored");
    }
    let mode = if pid1 {
        Mode::Pid1
    } else if std::env::var_os("NOTIFY_SOCKET").is_some() {
        Mode::Systemd
    } else {
        Mode::Standalone
    };
    if pid1 && let Err(e) = init::set_oom_score_adj(config.oom_score_adj) {
        tracing::warn!(error = %e, "cannot set oom_score_adj");
    }

    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(32)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return End::Fatal(format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        let _reaper = if pid1 {
            Some(init::spawn_reaper().map_err(daemon::DaemonError::Signals)?)
        } else {
            None
        };
        daemon::run(&config, mode).await
    });
    match result {
        Ok(()) => End::Clean,
        Err(e) => {
            tracing::error!(error = %e, "wardd failed");
            End::Fatal(e.to_string())
        }
    }
}
