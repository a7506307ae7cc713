/// Whether decode's matrix-vector products over q8 / q4 / q4s weights take the activation vector as f32
/// (the default: exact for the stored weights) or quantized to int8 per block of 32, as llama.cpp does:
/// integer dot products instead of unpacking every code to f32, faster where that unpacking, not memory,
/// bounds decode, at the cost of slightly different results. Prefill, the vision tower and 16-bit
/// weights always keep f32 activations. Set before any work starts, like `ComputeThreads`.
public enum DecodeActivations {
    public enum Precision: String, CaseIterable, Sendable {
        case f32, int8
    }

    /// Set by `use` before work starts and only read afterwards, hence unsynchronised.
    nonisolated(unsafe) private static var chosen = Precision.f32
    nonisolated(unsafe) private static var onEveryRow = false

    /// The activations of one-row products (each decode step, and the prompt's last row of logits).
    public static var precision: Precision { chosen }

    /// Verification: int8 activations on every row of the language model's Linear layers, prompt rows
    /// too, one row at a time as if each position were decoded: teacher-forced logits then show what
    /// int8 activations cost, which they would not if only the few decoded tokens used them.
    public static var onEveryLanguageRow: Bool { chosen == .int8 && onEveryRow }

    /// Uses `precision` from now on; `everyLanguageRow` as `onEveryLanguageRow` says.
    public static func use(_ precision: Precision, everyLanguageRow: Bool = false) {
        chosen = precision
        onEveryRow = everyLanguageRow
    }
}
