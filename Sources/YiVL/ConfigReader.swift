import VLQCore

/// Typed access to a JSON config file, with errors that name the file and the key.
public struct ConfigReader {
    public let path: String
    public let json: JSONValue

    public init(path: String) throws {
        self.path = path
        let file = try MappedFile(path: path)
        do { json = try JSONValue.parse(file.bytes) } catch {
            throw VLQError(CoreError.malformedJSON, path, "\(error)")
        }
        guard json.objectValue != nil else { throw VLQError(ModelError.invalidConfig, path, "not a JSON object") }
    }

    public init(path: String, json: JSONValue) {
        self.path = path
        self.json = json
    }

    public func has(_ key: String) -> Bool { json[key].map { !$0.isNull } ?? false }

    func value(_ key: String) throws -> JSONValue {
        guard let v = json[key], !v.isNull else {
            throw VLQError(ModelError.invalidConfig, path, "missing key \"\(key)\"")
        }
        return v
    }

    public func int(_ key: String, default fallback: Int? = nil, min: Int = 1) throws -> Int {
        if fallback != nil, !has(key) { return fallback! }
        guard let v = try value(key).intValue else {
            throw VLQError(ModelError.invalidConfig, path, "\"\(key)\" must be an integer")
        }
        guard v >= min else {
            throw VLQError(ModelError.invalidConfig, path, "\"\(key)\" is \(v), must be at least \(min)")
        }
        return v
    }

    public func double(_ key: String, default fallback: Double? = nil) throws -> Double {
        if fallback != nil, !has(key) { return fallback! }
        guard let v = try value(key).doubleValue else {
            throw VLQError(ModelError.invalidConfig, path, "\"\(key)\" must be a number")
        }
        return v
    }

    public func string(_ key: String, default fallback: String? = nil) throws -> String {
        if fallback != nil, !has(key) { return fallback! }
        guard let v = try value(key).stringValue else {
            throw VLQError(ModelError.invalidConfig, path, "\"\(key)\" must be a string")
        }
        return v
    }

    public func bool(_ key: String, default fallback: Bool) throws -> Bool {
        guard has(key) else { return fallback }
        guard let v = try value(key).boolValue else {
            throw VLQError(ModelError.invalidConfig, path, "\"\(key)\" must be true or false")
        }
        return v
    }

    public func doubles(_ key: String, count: Int) throws -> [Double] {
        guard let a = try value(key).arrayValue, a.count == count else {
            throw VLQError(ModelError.invalidConfig, path, "\"\(key)\" must be an array of \(count) numbers")
        }
        return try a.map { v in
            guard let d = v.doubleValue else {
                throw VLQError(ModelError.invalidConfig, path, "\"\(key)\" must be an array of \(count) numbers")
            }
            return d
        }
    }

    /// A nested object such as `crop_size` or `size`.
    public func object(_ key: String) throws -> ConfigReader {
        let v = try value(key)
        guard v.objectValue != nil else {
            throw VLQError(ModelError.invalidConfig, path, "\"\(key)\" must be an object")
        }
        return ConfigReader(path: "\(path) (\(key))", json: v)
    }

    public func require(_ condition: Bool, _ reason: @autoclosure () -> String) throws {
        if !condition { throw VLQError(ModelError.invalidConfig, path, reason()) }
    }
}
