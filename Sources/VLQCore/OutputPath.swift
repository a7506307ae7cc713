/// Checks an output path before a command does any work, so that a mistake in it fails in a second
/// rather than after a conversion or a calibration of many minutes.
public enum OutputPath {
    /// Refuses an output that is an existing folder, whose folder does not exist, or that is the same
    /// file as one of `inputs` (the rename at the end would replace an input: sources are never written).
    public static func check(_ output: String, inputs: [String]) throws {
        if FileSystem.isDirectory(output) {
            throw VLQError(CoreError.unusableOutput, output, "is a folder; give the path of a file to write")
        }
        let folder = AtomicOutputFile.directory(of: output)
        guard FileSystem.isDirectory(folder) else {
            throw VLQError(CoreError.unusableOutput, output, "folder \(folder) does not exist")
        }
        guard let target = FileSystem.realPath(output) else { return }
        for input in inputs where FileSystem.realPath(input) == target {
            throw VLQError(
                CoreError.unusableOutput, output,
                "is also an input (\(input)); sources are never written, choose another")
        }
    }
}
