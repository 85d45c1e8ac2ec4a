//! `run`'s flags, and the validated configuration the stages read.

use std::path::PathBuf;

use crate::dataset::Subset;
use crate::engine::{trt, EngineOptions, EpChoice};
pub use crate::formats::Batching;

use super::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SubsetArg {
    Unsafes,
    SafeUnsafes,
    SafeSafes,
    All,
}

impl SubsetArg {
    /// The subsets this choice runs, in the reference's order.
    pub fn subsets(self) -> Vec<Subset> {
        match self {
            SubsetArg::Unsafes => vec![Subset::Unsafes],
            SubsetArg::SafeUnsafes => vec![Subset::SafeUnsafes],
            SubsetArg::SafeSafes => vec![Subset::SafeSafes],
            SubsetArg::All => Subset::ALL.to_vec(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Model directory written by `export`.
    #[arg(long, env = "VLGUARD_MODEL")]
    pub model: PathBuf,
    /// Which questions to ask: unsafes (442), safe_unsafes (558), safe_safes (558) or all.
    #[arg(long, value_enum)]
    pub subset: SubsetArg,
    /// VLGuard test.json (where `fetch dataset` puts it by default).
    #[arg(long, default_value = "data/VLGuard/test.json")]
    pub meta: PathBuf,
    /// Image root the `image` paths of test.json are relative to.
    #[arg(long, default_value = "data/VLGuard/test")]
    pub images: PathBuf,
    /// Results folder: answers go to OUT/{subset}/{engine}.json.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Engine name used for the results files (default: the model directory's name): a
    /// plain file name (no `/`, not `..`, no leading dot).
    #[arg(long, value_parser = parse_engine_name)]
    pub engine: Option<String>,
    /// Execution provider: auto tries TensorRT, then CUDA, then CPU.
    #[arg(long, value_enum, default_value = "auto", env = "VLGUARD_EP")]
    pub ep: EpChoice,
    /// GPU to use with CUDA / TensorRT.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// Prompts decoded together: the decoder's slots (see --batching).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// How prompts share the decoder's slots: `static` batches (prompts grouped by
    /// length; a batch ends when its longest answer does), `continuous` (a finished row's
    /// slot takes the next prompt at once; needs a model exported with `--decoder
    /// fused`), or `auto` (continuous when the model allows it and --batch-size > 1).
    #[arg(long, value_enum, default_value = "auto")]
    pub batching: Batching,
    /// Run the vision tower on a thread of its own, a batch ahead of the decoder: `auto`
    /// does when the vision tower or the decoder is on a GPU (on a CPU alone the two
    /// would fight over the same cores).
    #[arg(long, value_enum, default_value = "auto")]
    pub vision_thread: Toggle,
    /// Finished rows stay in the batch (computed, ignored) even on the CPU, as on a GPU,
    /// and prompts join busy slots through the GPU's row-copy path on host memory:
    /// replays the device scheduling on a machine without one (tests, the device check's
    /// rehearsal).
    #[arg(long)]
    pub keep_finished_rows: bool,
    /// Largest image file read, in bytes; a larger file (or anything that is not a
    /// regular file) is a per-sample error, refused before it is read.
    #[arg(long, default_value_t = crate::preprocess::DEFAULT_MAX_IMAGE_BYTES)]
    pub max_image_bytes: u64,
    /// Longest answer in tokens (VLGuard_eval.py: 256).
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Only the first N samples of each subset.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Start over: ignore (and move aside) an existing journal.
    #[arg(long)]
    pub fresh: bool,
    /// Run only part K of N of each subset (contiguous ranges), e.g. one process per GPU:
    /// files are named {engine}.shard-K-of-N; join them with `vlguard-ort merge`. `auto`
    /// takes K and N from the cluster scheduler: a Slurm job array
    /// (SLURM_ARRAY_TASK_ID / _MIN / _STEP / _COUNT) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX, with the count in VLGUARD_SHARD_COUNT).
    #[arg(long, value_name = "K/N|auto", value_parser = parse_shard_arg)]
    pub shard: Option<ShardArg>,
    /// TensorRT engine cache base folder (default: MODEL/trt-cache); engines go to a
    /// sub-folder per model hash, GPU and TensorRT version. Delete it to rebuild.
    #[arg(long, env = "VLGUARD_TRT_CACHE", value_name = "DIR")]
    pub trt_cache: Option<PathBuf>,
    /// Folder holding TensorRT 10's libraries (libnvinfer.so.10); default: the one
    /// `vlguard-ort setup --gpu --tensorrt` fills, then the system library path.
    #[arg(long, env = "VLGUARD_TRT_LIB_DIR", value_name = "DIR")]
    pub trt_lib_dir: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// ONNX Runtime shared library (default: $ORT_DYLIB_PATH, then the folders
    /// `vlguard-ort doctor` lists, in order).
    #[arg(long, env = "VLGUARD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    Auto,
    On,
    Off,
}

/// Part K of N (1-based) of each subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl Shard {
    /// The contiguous range of `len` samples this shard takes (sizes differ by <= 1).
    pub fn range(self, len: usize) -> std::ops::Range<usize> {
        (self.k - 1) * len / self.n..self.k * len / self.n
    }

    /// The engine name its files are written under.
    pub fn engine_name(self, engine: &str) -> String {
        format!("{engine}.shard-{}-of-{}", self.k, self.n)
    }

    /// The inverse of [`Shard::engine_name`]: `E.shard-K-of-N` -> (`E`, K/N); `None` for
    /// a name that is not a shard's.
    pub fn from_engine_name(name: &str) -> Option<(&str, Shard)> {
        let (engine, part) = name.rsplit_once(".shard-")?;
        let (k, n) = part.split_once("-of-")?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if engine.is_empty() || !digits(k) || !digits(n) {
            return None;
        }
        let shard = parse_shard(&format!("{k}/{n}")).ok()?;
        Some((engine, shard))
    }
}

impl std::fmt::Display for Shard {
    /// `K/N`, as `--shard` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// `--shard`: a given part, or the scheduler's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardArg {
    Given(Shard),
    Auto,
}

pub fn parse_shard_arg(text: &str) -> Result<ShardArg, String> {
    match text {
        "auto" => Ok(ShardArg::Auto),
        _ => parse_shard(text).map(ShardArg::Given),
    }
}

/// The shard a cluster scheduler gives this process, from its environment (`var` looks a
/// variable up): a Slurm job array task (K from the task id's place in the array, which
/// may start anywhere and step, N the array's task count) or a Kubernetes Indexed Job
/// pod (K from the 0-based `JOB_COMPLETION_INDEX`, N from `VLGUARD_SHARD_COUNT`, which
/// the Job sets to its `completions`).
pub fn shard_from_env(var: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
    let number = |name: &str| -> Result<Option<usize>, String> {
        match var(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}={v} is not a whole number")),
        }
    };
    let need = |name: &str| number(name)?.ok_or_else(|| format!("--shard auto: {name} is not set"));
    if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let count = need("SLURM_ARRAY_TASK_COUNT")?;
        if id < min || (id - min) % step != 0 {
            return Err(format!(
                "--shard auto: SLURM_ARRAY_TASK_ID {id} is not in the array {min}, {min}+{step}, ..."
            ));
        }
        return parse_shard(&format!("{}/{count}", (id - min) / step + 1));
    }
    if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        let count = need("VLGUARD_SHARD_COUNT")?;
        return parse_shard(&format!("{}/{count}", index + 1));
    }
    Err(
        "--shard auto needs a Slurm job array (SLURM_ARRAY_TASK_ID) or a Kubernetes \
         Indexed Job (JOB_COMPLETION_INDEX); neither is set"
            .into(),
    )
}

/// Parses `K/N` with 1 <= K <= N.
pub fn parse_shard(text: &str) -> Result<Shard, String> {
    let bad = || format!("--shard must look like K/N with 1 <= K <= N, got `{text}`");
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let k: usize = k.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok(Shard { k, n })
}

/// An engine name becomes a file name under `OUT/{subset}/`: anything that could name
/// another file (a path, `..`, a hidden or empty name) is refused.
pub fn parse_engine_name(text: &str) -> Result<String, String> {
    let bad = |why: &str| format!("engine name `{text}` is refused: {why}");
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    if text.contains('/') || text.contains('\\') {
        return Err(bad("it holds a path separator"));
    }
    if text.starts_with('.') {
        return Err(bad("it starts with a dot"));
    }
    if text.chars().any(char::is_control) {
        return Err(bad("it holds a control character"));
    }
    Ok(text.to_string())
}

/// Validated run configuration.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub subsets: Vec<Subset>,
    pub meta: PathBuf,
    pub images: PathBuf,
    pub out: PathBuf,
    pub engine_name: String,
    pub engine: EngineOptions,
    pub batch_size: usize,
    pub batching: Batching,
    pub vision_thread: Toggle,
    pub max_new_tokens: usize,
    pub max_image_bytes: u64,
    pub limit: Option<usize>,
    pub fresh: bool,
    pub shard: Option<Shard>,
}

impl RunConfig {
    /// The engine name this run's files are written under (a shard's has its part).
    pub fn file_engine(&self) -> String {
        match self.shard {
            Some(shard) => shard.engine_name(&self.engine_name),
            None => self.engine_name.clone(),
        }
    }

    pub fn from_args(args: &RunArgs) -> Result<RunConfig, Error> {
        if args.batch_size == 0 {
            return Err(Error::BatchSize);
        }
        if args.max_new_tokens == 0 {
            return Err(Error::MaxTokens);
        }
        let model = args.model.clone();
        // Missing: the export's hint; there but not a regular file: the load says what
        // it is (it reads regular files only).
        if !model.join(vlguard_export::manifest::MANIFEST_FILE).exists() {
            return Err(Error::Model(model));
        }
        if !args.images.is_dir() {
            return Err(match args.images.exists() {
                true => Error::ImagesNotDir(args.images.clone()),
                false => Error::Images(args.images.clone()),
            });
        }
        let engine_name = match &args.engine {
            Some(name) => name.clone(),
            None => {
                let dir = std::fs::canonicalize(&model).unwrap_or_else(|_| model.clone());
                let name = dir.file_name().unwrap_or("model".as_ref());
                // Lossy names would collide: two folders whose names are not UTF-8 both
                // became `\u{fffd}` and wrote the same results file.
                let name = name.to_str().ok_or_else(|| {
                    Error::EngineName(format!(
                        "engine name `{}` is refused: the model folder's name is not UTF-8",
                        name.to_string_lossy()
                    ))
                })?;
                parse_engine_name(name).map_err(Error::EngineName)?
            }
        };
        Ok(RunConfig {
            subsets: args.subset.subsets(),
            meta: args.meta.clone(),
            images: args.images.clone(),
            out: args.out.clone(),
            engine_name,
            engine: EngineOptions {
                trt_cache: Some(
                    args.trt_cache
                        .clone()
                        .unwrap_or_else(|| model.join("trt-cache")),
                ),
                // The prompt bound is trt::MAX_TEXT_TOKENS: a constant, so that profiles,
                // and with them cached engines, stay the same from one subset to the next.
                trt_limits: trt::Limits::new(args.batch_size, args.max_new_tokens),
                trt_lib_dir: args.trt_lib_dir.clone(),
                keep_finished_rows: args.keep_finished_rows,
                model_dir: model,
                ort_lib: args.ort_lib.clone(),
                ep: args.ep,
                device_id: args.device_id,
                threads: args.threads,
            },
            batch_size: args.batch_size,
            batching: args.batching,
            vision_thread: args.vision_thread,
            max_new_tokens: args.max_new_tokens,
            max_image_bytes: args.max_image_bytes,
            limit: args.limit,
            fresh: args.fresh,
            shard: match args.shard {
                None => None,
                Some(ShardArg::Given(shard)) => Some(shard),
                Some(ShardArg::Auto) => {
                    Some(shard_from_env(|name| std::env::var(name).ok()).map_err(Error::Shard)?)
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_sample_once() {
        for len in [0, 1, 7, 442, 558] {
            for n in 1..=8 {
                let ranges: Vec<_> = (1..=n).map(|k| Shard { k, n }.range(len)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[n - 1].end, len);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
            }
        }
        assert_eq!(parse_shard("2/4").unwrap(), Shard { k: 2, n: 4 });
        let shard = Shard { k: 3, n: 12 };
        assert_eq!(
            Shard::from_engine_name(&shard.engine_name("a.shard-b")),
            Some(("a.shard-b", shard))
        );
        for name in [
            "e",
            "e.shard-0-of-2",
            "e.shard-3-of-2",
            "e.shard-+1-of-2",
            ".shard-1-of-2",
        ] {
            assert_eq!(Shard::from_engine_name(name), None, "{name}");
        }
        assert!(
            parse_shard("0/4").is_err() && parse_shard("5/4").is_err() && parse_shard("x").is_err()
        );
    }

    #[test]
    fn auto_shards_come_from_slurm_arrays_and_indexed_jobs() {
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        }
        // sbatch --array=0-3: task 2 of tasks 0..3 is shard 3/4.
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert_eq!(shard_from_env(env(&slurm)), Ok(Shard { k: 3, n: 4 }));
        // sbatch --array=1-9:4 runs tasks 1, 5, 9: task 9 is shard 3/3.
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "9"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_STEP", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert_eq!(shard_from_env(env(&stepped)), Ok(Shard { k: 3, n: 3 }));
        // Kubernetes Indexed Job, completions 2: index 0 is shard 1/2.
        let k8s = [("JOB_COMPLETION_INDEX", "0"), ("VLGUARD_SHARD_COUNT", "2")];
        assert_eq!(shard_from_env(env(&k8s)), Ok(Shard { k: 1, n: 2 }));
        let no_count = [("JOB_COMPLETION_INDEX", "0")];
        assert!(shard_from_env(env(&no_count))
            .unwrap_err()
            .contains("VLGUARD_SHARD_COUNT"));
        let outside = [
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert!(shard_from_env(env(&outside))
            .unwrap_err()
            .contains("--shard"));
        let bad = [("SLURM_ARRAY_TASK_ID", "x")];
        assert!(shard_from_env(env(&bad))
            .unwrap_err()
            .contains("SLURM_ARRAY_TASK_ID=x"));
        assert!(shard_from_env(env(&[]))
            .unwrap_err()
            .contains("neither is set"));
        assert_eq!(parse_shard_arg("auto"), Ok(ShardArg::Auto));
    }

    #[test]
    fn engine_names_are_plain_file_names() {
        assert_eq!(parse_engine_name("llava15-7b").unwrap(), "llava15-7b");
        assert_eq!(parse_engine_name("a..b").unwrap(), "a..b");
        for bad in [
            "",
            "../../data/test",
            "/abs",
            "a/b",
            ".hidden",
            "..",
            "a\nb",
        ] {
            assert!(parse_engine_name(bad).is_err(), "{bad:?}");
        }
    }
}
