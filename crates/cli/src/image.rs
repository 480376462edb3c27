//! `isobench image`: builds the guest image and reports what the cache holds.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use isobench_harness::image::{
    self, ArtifactSet, BuildProgress, Cache, DockerImageState, ImageError, ImportOutcome,
    RecipeHashes, SetDamage, SetOutcome,
};

/// Subcommands of `isobench image`.
#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Builds whatever the cache lacks: the guest kernel, the root filesystem and its Docker
    /// image. With nothing changed it only checks the cache and returns within seconds.
    Build(BuildArgs),
    /// Shows the artifacts, their sizes, the recipe hashes and whether Docker has the image.
    /// Exits with failure unless both artifact sets are complete.
    Status(StatusArgs),
}

/// Flags of `isobench image build`.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// Skips importing `rootfs.tar` into the Docker engine.
    #[arg(long)]
    no_docker: bool,
    /// Builds only these artifact sets, comma-separated. Default: both. The `process` and
    /// `docker` backends need only `rootfs`; the microVM needs `kernel` too.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SETS")]
    only: Option<Vec<SetArg>>,
}

/// Artifact set named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SetArg {
    /// The guest kernel: `vmlinux` and `bzImage`.
    Kernel,
    /// The root filesystem: `rootfs.tar`, `rootfs.ext4` and the tree.
    Rootfs,
}

impl SetArg {
    fn set(self) -> ArtifactSet {
        match self {
            SetArg::Kernel => ArtifactSet::Kernel,
            SetArg::Rootfs => ArtifactSet::Rootfs,
        }
    }
}

/// Flags of `isobench image status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// Prints the status as JSON.
    #[arg(long)]
    json: bool,
    /// Skips asking the Docker engine whether it has the image.
    #[arg(long)]
    no_docker: bool,
}

/// Runs `isobench image`.
pub fn main(command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Build(args) => build(args),
        ImageCommand::Status(args) => status(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime failed")
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let cache = Cache::from_env()?;
    let sets: Vec<ArtifactSet> = match &args.only {
        Some(only) => only.iter().map(|set| set.set()).collect(),
        None => ArtifactSet::ALL.to_vec(),
    };
    let progress = TerminalProgress::new();
    let summary = image::build_sets(&cache, &sets, &progress)?;
    progress.clear();

    let paths = &summary.paths;
    for (label, outcome, path) in [
        ("guest kernel   ", &summary.kernel, &paths.vmlinux),
        ("root filesystem", &summary.rootfs, &paths.rootfs_ext4),
    ] {
        if *outcome == SetOutcome::NotRequested {
            out!("{label}  not requested");
        } else {
            out!("{label}  {}  {}", describe(outcome), path.display());
        }
    }

    // The Docker image is the root filesystem's tar, so it is imported only along with it.
    if !args.no_docker && sets.contains(&ArtifactSet::Rootfs) {
        let message = format!(
            "checking {}, importing rootfs.tar if missing",
            paths.docker_tag
        );
        if progress.plain {
            eprintln!("docker {message}");
        }
        let spinner = progress.spinner(message);
        spinner.set_prefix("docker");
        let imported = runtime()?.block_on(image::import_docker_image(paths));
        spinner.finish_and_clear();
        match imported? {
            ImportOutcome::Present => out!("docker image     present  {}", paths.docker_tag),
            ImportOutcome::Imported { seconds } => {
                out!(
                    "docker image     imported in {seconds:.1} s  {}",
                    paths.docker_tag
                )
            }
        }
    }
    out!("image id         {}", paths.id);
    Ok(ExitCode::SUCCESS)
}

/// Describes how a set became complete, for one line of output.
pub(crate) fn describe(outcome: &SetOutcome) -> String {
    match outcome {
        SetOutcome::Reused => "cached".to_string(),
        SetOutcome::NotRequested => "not requested".to_string(),
        SetOutcome::Built { seconds } => format!("built in {seconds:.0} s"),
    }
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let cache = Cache::from_env()?;
    let hashes = RecipeHashes::embedded();
    let mut status = image::status(&cache, &hashes);
    if !args.no_docker {
        status.docker_image =
            Some(runtime()?.block_on(image::docker_image_state(&status.docker_tag)));
    }

    if args.json {
        out!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        out!("cache     {}", status.cache_dir.display());
        out!("image id  {}", status.image_id);
        for set in &status.sets {
            let state = match (&set.damage, set.complete) {
                (_, true) => "complete",
                (Some(_), false) => "damaged",
                (None, false) => "not built",
            };
            out!(
                "{:<9} {}  {state}  {}",
                set.set,
                set.hash,
                set.dir.display()
            );
            if let Some(damage) = &set.damage {
                out!(
                    "  {damage}: run `isobench image build --only {}` to rebuild it",
                    set.set
                );
            }
            for artifact in &set.artifacts {
                let size = artifact
                    .size_bytes
                    .map(|bytes| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)))
                    .unwrap_or_else(|| "-".to_string());
                out!("  {:<14} {size:>10}", artifact.name);
            }
        }
        for dir in &status.unfinished_builds {
            out!("unfinished build (not complete) {}", dir.display());
        }
        let docker = match &status.docker_image {
            None => "not checked".to_string(),
            Some(DockerImageState::Present) => "present".to_string(),
            Some(DockerImageState::Missing) => "missing: run `isobench image build`".to_string(),
            Some(DockerImageState::EngineUnreachable { message }) => message.clone(),
        };
        out!("docker    {}  {docker}", status.docker_tag);
        let built = |name: &str| {
            status
                .sets
                .iter()
                .any(|set| set.set == name && set.complete)
        };
        if built("rootfs") && !built("kernel") {
            out!(
                "the process and docker backends can run; the microvm backend needs the guest \
                 kernel too: run `isobench image build --only kernel`"
            );
        } else if status.sets.iter().any(|set| set.damage.is_some()) {
            out!("run `isobench image build` to rebuild what is damaged or missing");
        } else if !status.complete {
            out!("run `isobench image build` to build what is missing");
        }
    }
    Ok(if status.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One spinner per artifact set, updated from the build threads. When standard error is not a
/// terminal (CI logs), each step is printed as a line instead.
pub(crate) struct TerminalProgress {
    bars: MultiProgress,
    spinners: Mutex<Vec<(ArtifactSet, ProgressBar)>>,
    plain: bool,
}

impl TerminalProgress {
    pub(crate) fn new() -> TerminalProgress {
        TerminalProgress {
            bars: MultiProgress::new(),
            spinners: Mutex::new(Vec::new()),
            plain: !std::io::stderr().is_terminal(),
        }
    }

    fn print(&self, set: ArtifactSet, message: &str) {
        if self.plain {
            eprintln!("{:<6} {message}", set.name());
        }
    }

    fn spinner(&self, message: String) -> ProgressBar {
        let spinner = self.bars.add(ProgressBar::new_spinner());
        spinner.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix:<6} {msg}")
                .expect("the template is valid"),
        );
        spinner.enable_steady_tick(Duration::from_millis(200));
        spinner.set_message(message);
        spinner
    }

    fn with_spinner(&self, set: ArtifactSet, action: impl FnOnce(&ProgressBar)) {
        let spinners = self
            .spinners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, spinner)) = spinners.iter().find(|(owner, _)| *owner == set) {
            action(spinner);
        }
    }

    pub(crate) fn clear(&self) {
        self.bars.clear().ok();
    }
}

impl BuildProgress for TerminalProgress {
    fn started(&self, set: ArtifactSet, hash: &str) {
        self.print(set, &format!("building {hash}"));
        let spinner = self.spinner(format!("building {hash}"));
        spinner.set_prefix(set.name());
        self.spinners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((set, spinner));
    }

    fn step(&self, set: ArtifactSet, message: &str) {
        self.print(set, message);
        self.with_spinner(set, |spinner| spinner.set_message(message.to_string()));
    }

    fn finished(&self, set: ArtifactSet, outcome: &SetOutcome) {
        // A set found in the cache had no spinner; the summary line reports it.
        if *outcome != SetOutcome::Reused {
            self.print(set, &format!("done: {}", describe(outcome)));
        }
        self.with_spinner(set, |spinner| {
            spinner.finish_with_message(format!("done: {}", describe(outcome)))
        });
    }

    fn failed(&self, set: ArtifactSet, error: &ImageError) {
        self.with_spinner(set, |spinner| {
            spinner.abandon_with_message(format!("failed: {error}"))
        });
    }

    fn damaged(&self, set: ArtifactSet, damage: &SetDamage) {
        let message = format!(
            "isobench: the cached guest {} is damaged: {damage}; rebuilding it",
            set.name()
        );
        if self.plain {
            eprintln!("{message}");
        } else {
            self.bars.println(message).ok();
        }
    }
}
