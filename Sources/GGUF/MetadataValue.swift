/// The value types of GGUF metadata (`gguf_type`).
public enum MetadataValueType: UInt32, Sendable, CustomStringConvertible {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Fixed size in bytes of a scalar of this type; nil for strings and arrays.
    var fixedSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }

    /// The least number of bytes one value of this type occupies in a file.
    var minimumEncodedSize: Int { fixedSize ?? (self == .string ? 8 : 12) }

    public var description: String {
        switch self {
        case .uint8: return "u8"
        case .int8: return "i8"
        case .uint16: return "u16"
        case .int16: return "i16"
        case .uint32: return "u32"
        case .int32: return "i32"
        case .float32: return "f32"
        case .bool: return "bool"
        case .string: return "string"
        case .array: return "array"
        case .uint64: return "u64"
        case .int64: return "i64"
        case .float64: return "f64"
        }
    }
}

/// One metadata value. Arrays keep their element type so that an empty array round-trips.
public indirect enum MetadataValue: Equatable, Sendable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    case array(MetadataValueType, [MetadataValue])

    public var type: MetadataValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .uint64: return .uint64
        case .int64: return .int64
        case .float32: return .float32
        case .float64: return .float64
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        }
    }

    /// A short type name for messages: `u32`, `string`, `array of string`.
    public var typeName: String {
        if case let .array(elementType, _) = self { return "array of \(elementType)" }
        return type.description
    }

    /// The value as an integer when it is any integer type (and fits), else nil.
    public var integerValue: Int64? {
        switch self {
        case let .uint8(v): return Int64(v)
        case let .int8(v): return Int64(v)
        case let .uint16(v): return Int64(v)
        case let .int16(v): return Int64(v)
        case let .uint32(v): return Int64(v)
        case let .int32(v): return Int64(v)
        case let .uint64(v): return Int64(exactly: v)
        case let .int64(v): return v
        default: return nil
        }
    }

    /// The value as a Double when it is a number of any type.
    public var doubleValue: Double? {
        switch self {
        case let .float32(v): return Double(v)
        case let .float64(v): return v
        default: return integerValue.map(Double.init)
        }
    }

    public var stringValue: String? {
        if case let .string(s) = self { return s }
        return nil
    }

    public var description: String {
        switch self {
        case let .uint8(v): return "\(v)"
        case let .int8(v): return "\(v)"
        case let .uint16(v): return "\(v)"
        case let .int16(v): return "\(v)"
        case let .uint32(v): return "\(v)"
        case let .int32(v): return "\(v)"
        case let .uint64(v): return "\(v)"
        case let .int64(v): return "\(v)"
        case let .float32(v): return "\(v)"
        case let .float64(v): return "\(v)"
        case let .bool(v): return "\(v)"
        case let .string(s): return s
        case let .array(t, items):
            let shown = items.prefix(8).map { item -> String in
                if case let .string(s) = item { return "\"\(s)\"" }
                return item.description
            }
            let more = items.count > 8 ? ", … (\(items.count) in all)" : ""
            return "[\(t)] [" + shown.joined(separator: ", ") + more + "]"
        }
    }
}

/// Ordered GGUF metadata with typed look-ups whose errors name the key and the expected type.
public struct Metadata: Sendable {
    /// Keys in file order.
    public private(set) var keys: [String] = []
    private var values: [String: MetadataValue] = [:]
    /// Names the source in error messages (a path, or "<memory>").
    public var source: String

    public init(source: String = "<memory>") { self.source = source }

    public var count: Int { keys.count }

    public subscript(key: String) -> MetadataValue? { values[key] }

    public func contains(_ key: String) -> Bool { values[key] != nil }

    /// Sets a value; a new key goes to the end, an existing key keeps its place.
    public mutating func set(_ key: String, _ value: MetadataValue) {
        if values.updateValue(value, forKey: key) == nil { keys.append(key) }
    }

    public mutating func remove(_ key: String) {
        if values.removeValue(forKey: key) != nil { keys.removeAll { $0 == key } }
    }

    /// All (key, value) pairs in order.
    public var entries: [(key: String, value: MetadataValue)] { keys.map { ($0, values[$0]!) } }

    private func require(_ key: String) throws -> MetadataValue {
        guard let value = values[key] else { throw GGUFError.missingKey(path: source, key: key) }
        return value
    }

    private func integer<T: FixedWidthInteger>(_ key: String, as: T.Type, name: String) throws -> T {
        let value = try require(key)
        guard let wide = value.integerValue, let narrow = T(exactly: wide) else {
            throw GGUFError.wrongType(path: source, key: key, expected: name, found: value.typeName + " \(value)")
        }
        return narrow
    }

    /// An unsigned 32-bit value; any integer type that holds a value in range is accepted.
    public func uint32(_ key: String) throws -> UInt32 { try integer(key, as: UInt32.self, name: "u32") }
    public func uint64(_ key: String) throws -> UInt64 { try integer(key, as: UInt64.self, name: "u64") }
    public func int(_ key: String) throws -> Int { try integer(key, as: Int.self, name: "integer") }

    public func float(_ key: String) throws -> Float {
        let value = try require(key)
        guard let d = value.doubleValue else {
            throw GGUFError.wrongType(path: source, key: key, expected: "f32", found: value.typeName)
        }
        return Float(d)
    }

    public func bool(_ key: String) throws -> Bool {
        let value = try require(key)
        guard case let .bool(b) = value else {
            throw GGUFError.wrongType(path: source, key: key, expected: "bool", found: value.typeName)
        }
        return b
    }

    public func string(_ key: String) throws -> String {
        let value = try require(key)
        guard case let .string(s) = value else {
            throw GGUFError.wrongType(path: source, key: key, expected: "string", found: value.typeName)
        }
        return s
    }

    public func stringArray(_ key: String) throws -> [String] {
        let value = try require(key)
        guard case let .array(.string, items) = value else {
            throw GGUFError.wrongType(path: source, key: key, expected: "array of string", found: value.typeName)
        }
        return items.map { $0.stringValue ?? "" }
    }

    public func floatArray(_ key: String) throws -> [Float] {
        let value = try require(key)
        guard case let .array(_, items) = value else {
            throw GGUFError.wrongType(path: source, key: key, expected: "array of f32", found: value.typeName)
        }
        return try items.map { item in
            guard let d = item.doubleValue else {
                throw GGUFError.wrongType(path: source, key: key, expected: "array of f32", found: value.typeName)
            }
            return Float(d)
        }
    }

    public func intArray(_ key: String) throws -> [Int] {
        let value = try require(key)
        guard case let .array(_, items) = value else {
            throw GGUFError.wrongType(path: source, key: key, expected: "array of integers", found: value.typeName)
        }
        return try items.map { item in
            guard let i = item.integerValue, let n = Int(exactly: i) else {
                throw GGUFError.wrongType(path: source, key: key, expected: "array of integers", found: value.typeName)
            }
            return n
        }
    }

    // Optional look-ups: nil when the key is absent, an error when it has the wrong type.
    public func uint32IfPresent(_ key: String) throws -> UInt32? { contains(key) ? try uint32(key) : nil }
    public func intIfPresent(_ key: String) throws -> Int? { contains(key) ? try int(key) : nil }
    public func floatIfPresent(_ key: String) throws -> Float? { contains(key) ? try float(key) : nil }
    public func boolIfPresent(_ key: String) throws -> Bool? { contains(key) ? try bool(key) : nil }
    public func stringIfPresent(_ key: String) throws -> String? { contains(key) ? try string(key) : nil }
}
