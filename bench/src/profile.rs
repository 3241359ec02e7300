//! `--profile`: a CPU profile of Meridian while a benchmark runs. `perf record` samples every
//! CPU (the benchmark starts its `meridian` processes itself, some inside a network namespace);
//! afterwards the samples with a frame in a `meridian` binary are folded into stacks
//! (`<bench>.folded`, the input of every flamegraph tool) and drawn as `<bench>.svg`.
//!
//! Frames above the leaf need frame pointers: build with
//! `RUSTFLAGS="-C force-frame-pointers=yes"` for whole stacks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_testkit::Proc;

/// Deepest stack kept (deeper frames are cut at the root end).
const MAX_DEPTH: usize = 128;

/// A `perf record` running for the length of one benchmark.
pub struct Recorder {
    proc: Proc,
    data: PathBuf,
    folded: PathBuf,
    svg: PathBuf,
    name: String,
}

impl Recorder {
    /// Starts recording every CPU at `hz` samples per second into `out/<name>.perf.data`.
    pub fn start(out: &Path, name: &str, hz: u32) -> Result<Recorder> {
        let perf = crate::tools::find_tool("perf")
            .context("--profile needs perf (Debian: apt-get install linux-perf)")?;
        let data = out.join(format!("{name}.perf.data"));
        let hz = hz.to_string();
        let mut args: Vec<String> = ["record", "-F", &hz, "-g", "-a", "-o"]
            .map(str::to_owned)
            .into();
        args.push(data.to_str().context("a UTF-8 path")?.to_owned());
        let log = out.join(format!("{name}.perf.log"));
        let mut proc = Proc::start("perf record", &perf, args, Vec::new(), &log)?;
        // perf's log says nothing about a failing benchmark.
        proc.print_log_on_failure = false;
        eprintln!(
            "profile: perf record (every CPU, {hz} Hz) into {}",
            data.display()
        );
        Ok(Recorder {
            proc,
            folded: out.join(format!("{name}.folded")),
            svg: out.join(format!("{name}.svg")),
            data,
            name: name.to_owned(),
        })
    }

    /// Stops recording, folds Meridian's stacks and draws the flamegraph; returns its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        // SIGINT is how perf record is told to write its data and stop (the kit's process
        // knows SIGTERM, SIGKILL, SIGSTOP and SIGCONT only).
        let pid = self.proc.pid().context("perf record is not running")?;
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.proc.exit_status().is_none() {
            if Instant::now() > deadline {
                // Dropping the process kills it.
                bail!("perf record did not stop within 60 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let perf = crate::tools::find_tool("perf").context("perf is gone")?;
        let mut script = Command::new(perf)
            .arg("script")
            .arg("-i")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running perf script")?;
        let stdout = script.stdout.take().context("perf script's output")?;
        let stacks = fold(BufReader::new(stdout))?;
        let _ = script.wait();
        if stacks.is_empty() {
            bail!("no sample had a frame in a meridian binary");
        }
        let mut lines: Vec<(&String, &u64)> = stacks.iter().collect();
        lines.sort();
        let mut folded = String::new();
        for (stack, n) in &lines {
            let _ = writeln!(folded, "{stack} {n}");
        }
        std::fs::write(&self.folded, folded)?;
        std::fs::write(&self.svg, svg(&self.name, &stacks))?;
        Ok(self.svg)
    }
}

/// Folds `perf script` output: for every sample with a frame in a `meridian` binary, its stack
/// root first, `;`-separated, with the number of such samples.
fn fold(input: impl BufRead) -> Result<HashMap<String, u64>> {
    let mut stacks: HashMap<String, u64> = HashMap::new();
    let mut frames: Vec<String> = Vec::new();
    let mut ours = false;
    let mut flush = |frames: &mut Vec<String>, ours: &mut bool| {
        if *ours && !frames.is_empty() {
            frames.truncate(MAX_DEPTH);
            let mut key = String::from("meridian");
            for f in frames.iter().rev() {
                key.push(';');
                key.push_str(f);
            }
            *stacks.entry(key).or_default() += 1;
        }
        frames.clear();
        *ours = false;
    };
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            flush(&mut frames, &mut ours);
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            // A sample's header: the frames follow.
            flush(&mut frames, &mut ours);
            continue;
        }
        let Some((symbol, dso)) = frame(line.trim()) else {
            continue;
        };
        ours |= dso.rsplit('/').next() == Some("meridian");
        frames.push(symbol);
    }
    flush(&mut frames, &mut ours);
    Ok(stacks)
}

/// `addr symbol+0xoff (dso)` → `(symbol, dso)`.
fn frame(line: &str) -> Option<(String, &str)> {
    let (_, rest) = line.split_once(' ')?;
    let open = rest.rfind(" (")?;
    let dso = rest[open + 2..].strip_suffix(')')?;
    let sym = rest[..open].trim();
    let sym = match sym.rfind("+0x") {
        Some(i) => &sym[..i],
        None => sym,
    };
    // `;` separates frames in the folded format.
    Some((sym.replace(';', ":"), dso))
}

/// A flamegraph of `stacks` as SVG: one box per frame, as wide as its share of the samples,
/// callers below callees; hover shows the name and count. Boxes under 0.1 % are left out.
fn svg(name: &str, stacks: &HashMap<String, u64>) -> String {
    #[derive(Default)]
    struct Node {
        count: u64,
        children: std::collections::BTreeMap<String, Node>,
    }
    let mut root = Node::default();
    for (stack, n) in stacks {
        root.count += n;
        let mut at = &mut root;
        for f in stack.split(';') {
            at = at.children.entry(f.to_owned()).or_default();
            at.count += n;
        }
    }
    const WIDTH: f64 = 1200.0;
    const ROW: f64 = 16.0;
    fn depth(n: &Node) -> usize {
        1 + n.children.values().map(depth).max().unwrap_or(0)
    }
    let rows = depth(&root);
    let height = rows as f64 * ROW + 40.0;
    let total = root.count.max(1) as f64;
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"monospace\" font-size=\"11\">\n\
         <text x=\"4\" y=\"16\" font-size=\"14\">meridian-bench {}: Meridian CPU profile, {} samples</text>\n",
        esc(name),
        root.count
    );
    // Depth-first, explicit stack (bounded by the number of boxes).
    let mut todo: Vec<(&str, &Node, f64, usize)> = vec![("all", &root, 0.0, 0)];
    while let Some((label, node, x, level)) = todo.pop() {
        let w = node.count as f64 / total * WIDTH;
        if w < WIDTH / 1000.0 {
            continue;
        }
        let y = height - (level as f64 + 1.0) * ROW;
        let hue = 20 + (label.len() * 7) % 40;
        let _ = write!(
            out,
            "<g><title>{} ({} samples, {:.2}%)</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"hsl({hue},80%,60%)\" stroke=\"white\" stroke-width=\"0.5\"/>",
            esc(label),
            node.count,
            node.count as f64 / total * 100.0,
            ROW - 1.0
        );
        let chars = (w / 7.0) as usize;
        if chars > 3 {
            let text: String = label.chars().take(chars.saturating_sub(2)).collect();
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x + 2.0,
                y + ROW - 4.0,
                esc(&text)
            );
        }
        out.push_str("</g>\n");
        let mut cx = x;
        for (child_label, child) in &node.children {
            todo.push((child_label, child, cx, level + 1));
            cx += child.count as f64 / total * WIDTH;
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_only_meridian_samples_root_first() {
        let script = "\
tokio-runtime-w 10 [000] 1.0: 1 cpu-clock:
\tffff1 sys_write+0x10 ([kernel.kallsyms])
\t55551 meridian_gateway::relay::half+0x20 (/root/.cache/meridian/target/release/meridian)
\t55552 tokio::runtime::task::poll+0x3 (/root/.cache/meridian/target/release/meridian)

haproxy 11 [001] 1.1: 1 cpu-clock:
\t44441 process_stream+0x1 (/usr/sbin/haproxy)

tokio-runtime-w 10 [000] 1.2: 1 cpu-clock:
\tffff1 sys_write+0x10 ([kernel.kallsyms])
\t55551 meridian_gateway::relay::half+0x20 (/root/.cache/meridian/target/release/meridian)
\t55552 tokio::runtime::task::poll+0x3 (/root/.cache/meridian/target/release/meridian)
";
        let stacks = fold(BufReader::new(script.as_bytes())).expect("folds");
        assert_eq!(stacks.len(), 1, "{stacks:?}");
        assert_eq!(
            stacks
                .get("meridian;tokio::runtime::task::poll;meridian_gateway::relay::half;sys_write"),
            Some(&2)
        );
        let svg = svg("gateway", &stacks);
        assert!(svg.contains("relay::half") && svg.ends_with("</svg>\n"));
    }
}
