/// Everything that can go wrong while reading or writing a GGUF file.
///
/// Each case's description is one line that names the file, and the key or tensor involved, and says what is wrong.
public enum GGUFError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, reason: String)
    case truncated(path: String, what: String, offset: Int, needed: Int, fileSize: Int)
    case badMagic(path: String, found: String)
    case unsupportedVersion(path: String, version: UInt32)
    case bigEndian(path: String)
    case invalid(path: String, what: String)
    case unknownValueType(path: String, key: String, rawType: UInt32)
    case unknownTensorType(path: String, tensor: String, rawType: UInt32)
    case badTensor(path: String, tensor: String, reason: String)
    case duplicateKey(path: String, key: String)
    case duplicateTensor(path: String, tensor: String)
    case missingKey(path: String, key: String)
    case wrongType(path: String, key: String, expected: String, found: String)
    case missingTensor(path: String, tensor: String)
    case unsupported(what: String)
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case let .cannotOpen(path, reason):
            return "\(path): cannot open: \(reason)"
        case let .truncated(path, what, offset, needed, size):
            return "\(path): truncated: \(what) at offset \(offset) needs \(needed) bytes but the file has \(size)"
        case let .badMagic(path, found):
            return "\(path): not a GGUF file (magic \(found), expected \"GGUF\")"
        case let .unsupportedVersion(path, version):
            return "\(path): unsupported GGUF version \(version) (supported: 2, 3)"
        case let .bigEndian(path):
            return "\(path): big-endian GGUF files are not supported"
        case let .invalid(path, what):
            return "\(path): \(what)"
        case let .unknownValueType(path, key, raw):
            return "\(path): metadata key '\(key)' has unknown value type \(raw)"
        case let .unknownTensorType(path, tensor, raw):
            return "\(path): tensor '\(tensor)' has unknown or unsupported type \(raw)"
        case let .badTensor(path, tensor, reason):
            return "\(path): tensor '\(tensor)': \(reason)"
        case let .duplicateKey(path, key):
            return "\(path): metadata key '\(key)' appears twice"
        case let .duplicateTensor(path, tensor):
            return "\(path): tensor '\(tensor)' appears twice"
        case let .missingKey(path, key):
            return "\(path): metadata key '\(key)' is missing"
        case let .wrongType(path, key, expected, found):
            return "\(path): metadata key '\(key)' is \(found), expected \(expected)"
        case let .missingTensor(path, tensor):
            return "\(path): tensor '\(tensor)' is missing"
        case let .unsupported(what):
            return what
        case let .writeFailed(path, reason):
            return "\(path): cannot write: \(reason)"
        }
    }
}
