//! Where a forward's time goes, phase by phase (`QWEN_SERVE_PHASE_TIMES=1`; off by default).
//!
//! Each phase ends with a wait for the device (nothing to wait for on the CPU), so its time is
//! the host's work to issue it plus the device's to run it, without the overlap of the two a
//! normal step has: the phases add up to more than a normal step, and show where it goes. The
//! totals are process-wide; `qwen-serve bench` reports them per step. CUDA graphs are off while
//! this is on (a wait cannot be captured).

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::Device;

/// The parts of a forward, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Uploading the step's inputs and looking up the embeddings.
    Embed,
    /// The RMSNorms (with their residual adds).
    Norm,
    /// The stacked q/k/v matmul.
    QkvProj,
    /// Biases, q/k norms, rotation and the KV-cache write ([`qwen_serve_kernels::qkv_step`]).
    QkvStep,
    Attention,
    OProj,
    GateUp,
    SiluMul,
    Down,
    /// MoE layers: the router, the routing decided on the host, the gather of each expert's
    /// rows, the weighted scatter-add of their outputs and the shared expert's gate (the
    /// experts' own matmuls count as gate_up, silu_mul and down).
    Route,
    /// The last norm, the output head and the logits' conversion to f32.
    Head,
}

pub const PHASES: [Phase; 11] = [
    Phase::Embed,
    Phase::Norm,
    Phase::QkvProj,
    Phase::QkvStep,
    Phase::Attention,
    Phase::OProj,
    Phase::GateUp,
    Phase::SiluMul,
    Phase::Down,
    Phase::Route,
    Phase::Head,
];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Embed => "embed",
            Phase::Norm => "norm",
            Phase::QkvProj => "qkv_proj",
            Phase::QkvStep => "qkv_step",
            Phase::Attention => "attention",
            Phase::OProj => "o_proj",
            Phase::GateUp => "gate_up",
            Phase::SiluMul => "silu_mul",
            Phase::Down => "down",
            Phase::Route => "route",
            Phase::Head => "head",
        }
    }
}

/// Whether phases are timed (`QWEN_SERVE_PHASE_TIMES=1`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("QWEN_SERVE_PHASE_TIMES").is_ok_and(|v| v == "1"))
}

/// Seconds spent in each phase so far, in [`PHASES`] order.
static TOTALS: Mutex<[f64; PHASES.len()]> = Mutex::new([0.0; PHASES.len()]);

thread_local! {
    /// When the current phase of this thread's forward began.
    static SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Starts timing a forward on this thread (after the device's queued work is done).
pub fn start(device: &Device) -> candle_core::Result<()> {
    if enabled() {
        device.synchronize()?;
        SINCE.set(Some(Instant::now()));
    }
    Ok(())
}

/// Ends `phase`: waits for the device, then adds the time since the last mark to `phase`.
pub fn mark(device: &Device, phase: Phase) -> candle_core::Result<()> {
    if !enabled() {
        return Ok(());
    }
    device.synchronize()?;
    let now = Instant::now();
    if let Some(since) = SINCE.replace(Some(now)) {
        let i = PHASES.iter().position(|&p| p == phase).expect("every phase is listed");
        TOTALS.lock().unwrap_or_else(|e| e.into_inner())[i] += (now - since).as_secs_f64();
    }
    Ok(())
}

/// Seconds per phase so far (all zeros while off), in [`PHASES`] order.
pub fn totals() -> [f64; PHASES.len()] {
    *TOTALS.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use candle_core::Device;

    use super::{mark, start, totals, Phase, PHASES};

    #[test]
    fn phases_are_named_apart_and_cost_nothing_while_off() {
        let names: HashSet<&str> = PHASES.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), PHASES.len());
        // QWEN_SERVE_PHASE_TIMES is not set for the tests.
        start(&Device::Cpu).unwrap();
        mark(&Device::Cpu, Phase::Attention).unwrap();
        assert_eq!(totals(), [0.0; PHASES.len()]);
    }
}
