/// Unicode character classes as llama.cpp's tokenizer sees them: one general-category group per code point
/// plus the White_Space property.
public struct UnicodeFlags: OptionSet, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let undefined = UnicodeFlags(rawValue: 1 << 0)
    public static let number = UnicodeFlags(rawValue: 1 << 1)
    public static let letter = UnicodeFlags(rawValue: 1 << 2)
    public static let separator = UnicodeFlags(rawValue: 1 << 3)
    public static let accentMark = UnicodeFlags(rawValue: 1 << 4)
    public static let punctuation = UnicodeFlags(rawValue: 1 << 5)
    public static let symbol = UnicodeFlags(rawValue: 1 << 6)
    public static let control = UnicodeFlags(rawValue: 1 << 7)
    public static let whitespace = UnicodeFlags(rawValue: 1 << 8)

    /// Flags of the code point `cp` (table look-up in the Basic Multilingual Plane).
    @inline(__always)
    public static func of(_ cp: UInt32) -> UnicodeFlags {
        cp < 0x10000 ? bmp[Int(cp)] : compute(cp)
    }

    static let bmp: [UnicodeFlags] = (0..<0x10000).map { compute(UInt32($0)) }

    static func compute(_ cp: UInt32) -> UnicodeFlags {
        guard let scalar = Unicode.Scalar(cp) else { return .control }  // surrogates
        var flags: UnicodeFlags
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: flags = .letter
        case .decimalNumber, .letterNumber, .otherNumber: flags = .number
        case .nonspacingMark, .spacingMark, .enclosingMark: flags = .accentMark
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation: flags = .punctuation
        case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol: flags = .symbol
        case .spaceSeparator, .lineSeparator, .paragraphSeparator: flags = .separator
        case .control, .format, .surrogate, .privateUse: flags = .control
        case .unassigned: flags = .undefined
        @unknown default: flags = .undefined
        }
        if scalar.properties.isWhitespace { flags.insert(.whitespace) }
        return flags
    }
}

/// GPT-2's reversible map between bytes and printable code points used by byte-level BPE vocabularies.
public enum ByteLevel {
    /// Code point for each byte.
    public static let byteToScalar: [UInt32] = {
        var map = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
                map[b] = UInt32(b)
            } else {
                map[b] = next
                next += 1
            }
        }
        return map
    }()

    /// UTF-8 of the code point for each byte.
    public static let byteToUTF8: [[UInt8]] = byteToScalar.map { Array(String(Unicode.Scalar($0)!).utf8) }

    /// Byte for each mapped code point (nil for code points outside the map).
    public static let scalarToByte: [UInt32: UInt8] = {
        var map: [UInt32: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { map[s] = UInt8(b) }
        return map
    }()
}
