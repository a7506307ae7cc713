public enum VLQVersion {
    public static let string = "0.1.0"
}
