/// A small backtracking matcher with ECMAScript semantics (leftmost match, alternatives in order, greedy
/// repetition), enough to express llama.cpp's pre-tokenizer regexes over code points.
///
/// llama.cpp runs these regexes with `std::regex` on a "collapsed" text where every non-ASCII code point is
/// replaced by one byte standing for its category; the `CharClass` predicates below reproduce that view.
indirect enum Pattern {
    case char(CharClass)
    case seq([Pattern])
    case alt([Pattern])
    /// Greedy repetition of one character class, `min...max` times.
    case rep(CharClass, min: Int, max: Int)
    /// Negative look-ahead of one character class: `(?!X)`; at the end of the text it succeeds.
    case notFollowedBy(CharClass)
    /// `$`: end of the piece being searched.
    case end

    static func plus(_ c: CharClass) -> Pattern { .rep(c, min: 1, max: .max) }
    static func star(_ c: CharClass) -> Pattern { .rep(c, min: 0, max: .max) }
    static func opt(_ c: CharClass) -> Pattern { .rep(c, min: 0, max: 1) }
    static func lit(_ s: String) -> Pattern { .seq(s.unicodeScalars.map { u in .char(CharClass { $0 == u.value }) }) }

    /// Calls `k` with each end position at which the pattern matches from `i`, in priority order, until `k`
    /// returns true.
    func match(_ s: UnsafeBufferPointer<UInt32>, _ i: Int, _ end: Int, _ k: (Int) -> Bool) -> Bool {
        switch self {
        case let .char(c):
            return i < end && c.test(s[i]) && k(i + 1)
        case let .seq(parts):
            return Pattern.matchSeq(parts[...], s, i, end, k)
        case let .alt(options):
            for option in options where option.match(s, i, end, k) { return true }
            return false
        case let .rep(c, lo, hi):
            var n = 0
            while n < hi, i + n < end, c.test(s[i + n]) { n += 1 }
            while n >= lo {
                if k(i + n) { return true }
                n -= 1
            }
            return false
        case let .notFollowedBy(c):
            return (i >= end || !c.test(s[i])) && k(i)
        case .end:
            return i == end && k(i)
        }
    }

    static func matchSeq(_ parts: ArraySlice<Pattern>, _ s: UnsafeBufferPointer<UInt32>, _ i: Int, _ end: Int,
                         _ k: (Int) -> Bool) -> Bool {
        guard let first = parts.first else { return k(i) }
        return first.match(s, i, end) { j in matchSeq(parts.dropFirst(), s, j, end, k) }
    }

    /// Splits `range` of `s` as llama.cpp's `unicode_regex_split_stl` does: every match is a piece, and so is
    /// the text between matches.
    func split(_ s: UnsafeBufferPointer<UInt32>, _ range: Range<Int>, into out: inout [Range<Int>]) {
        var start = range.lowerBound
        var pieceStart = range.lowerBound
        while start < range.upperBound {
            var matchEnd = -1
            _ = match(s, start, range.upperBound) { j in
                matchEnd = j
                return true
            }
            if matchEnd > start {
                if start > pieceStart { out.append(pieceStart..<start) }
                out.append(start..<matchEnd)
                pieceStart = matchEnd
                start = matchEnd
            } else {
                start += 1
            }
        }
        if pieceStart < range.upperBound { out.append(pieceStart..<range.upperBound) }
    }
}

/// A set of code points, as seen through llama.cpp's collapsed-text regex view.
struct CharClass {
    let test: (UInt32) -> Bool
    init(_ test: @escaping (UInt32) -> Bool) { self.test = test }

    static func flags(_ cp: UInt32) -> UnicodeFlags { UnicodeFlags.of(cp) }

    /// `\s`: ASCII white space, or any non-ASCII White_Space code point (collapsed to a vertical tab).
    static let space = CharClass { cp in
        cp < 128 ? (cp == 32 || (9...13).contains(cp)) : flags(cp).contains(.whitespace)
    }

    /// A non-ASCII code point of category `flag` (white space wins, as in the collapsed text).
    static func category(_ flag: UnicodeFlags, ascii: @escaping (UInt32) -> Bool) -> CharClass {
        CharClass { cp in
            if cp < 128 { return ascii(cp) }
            let f = flags(cp)
            return !f.contains(.whitespace) && f.contains(flag)
        }
    }

    static let letter = category(.letter) { (65...90).contains($0) || (97...122).contains($0) }
    static let number = category(.number) { (48...57).contains($0) }
    /// `\p{P}` in the collapsed view: ASCII `!-#%-*,-/:-;?-@[-]_{}` and non-ASCII punctuation.
    static let punctuation = category(.punctuation) { cp in
        (0x21...0x23).contains(cp) || (0x25...0x2A).contains(cp) || (0x2C...0x2F).contains(cp)
            || (0x3A...0x3B).contains(cp) || (0x3F...0x40).contains(cp) || (0x5B...0x5D).contains(cp)
            || cp == 0x5F || cp == 0x7B || cp == 0x7D
    }
    static let asciiDigit = CharClass { (48...57).contains($0) }

    /// Literal code points and ranges on the real text (the `std::wregex` path), where non-ASCII white space
    /// has been replaced by a vertical tab and so matches no literal.
    static func ranges(_ spec: [ClosedRange<UInt32>]) -> CharClass {
        CharClass { cp in
            if cp >= 128 && flags(cp).contains(.whitespace) { return false }
            return spec.contains { $0.contains(cp) }
        }
    }

    static func any(_ classes: CharClass...) -> CharClass { CharClass { cp in classes.contains { $0.test(cp) } } }
    static func not(_ c: CharClass) -> CharClass { CharClass { !c.test($0) } }
    static func scalars(_ s: String) -> CharClass {
        let set = Set(s.unicodeScalars.map(\.value))
        return CharClass { set.contains($0) }
    }
}
