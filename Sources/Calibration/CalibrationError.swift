import VLQCore

/// The kinds of failure reading calibration sets and statistics, or collecting statistics.
public enum CalibrationError: String, ErrorKind, Equatable {
    /// A calibration set without samples, or with a line lacking its image or question.
    case invalidSet
    /// A statistics file with a tensor missing, misshapen, not finite or inconsistent.
    case invalidStatistics
    /// Statistics that do not belong together or to this model: other layers or column counts.
    case statisticsMismatch
    /// Statistics of the same calibration set merged twice: its samples would count double.
    case sameSetTwice
    /// Statistics that would need more memory than the budget allows.
    case overBudget
}
