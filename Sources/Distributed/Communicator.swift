#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The processes of a data-parallel run: each knows its rank among `size`, and sums arrays with all the others
/// (every process gets the same sum, in the same order, so all apply the same update).
public protocol Communicator: AnyObject, Sendable {
    var rank: Int { get }
    var size: Int { get }
    /// values ← Σ over processes of values, element-wise (an allreduce).
    func sum(_ values: inout [Float]) throws
    func sum(_ values: inout [Double]) throws
}

public enum DistributedError: Error, CustomStringConvertible {
    case unavailable(String)
    case failed(String)

    public var description: String {
        switch self {
        case let .unavailable(reason): return "MPI: \(reason)"
        case let .failed(reason): return "MPI: \(reason)"
        }
    }
}

/// MPI through the Open MPI library found at run time: nothing to build or install for a run on one machine, and
/// `mpirun -np N lorakit train …` makes each process one rank. Open MPI's handles (the world communicator, the
/// float and double types, the sum) are the addresses of its exported objects, which is why this speaks Open MPI's
/// ABI (Debian's `openmpi-bin`/`libopenmpi3`; MPICH's integer handles are not supported).
public final class MPICommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public let size: Int

    typealias InitFunction = @convention(c) (UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32
    typealias CommQuery = @convention(c) (UnsafeMutableRawPointer, UnsafeMutablePointer<Int32>) -> Int32
    typealias AllreduceFunction = @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int32, UnsafeMutableRawPointer,
                                                  UnsafeMutableRawPointer, UnsafeMutableRawPointer) -> Int32
    typealias FinalizeFunction = @convention(c) () -> Int32

    let allreduce: AllreduceFunction
    let finalize: FinalizeFunction
    let world: UnsafeMutableRawPointer, floatType: UnsafeMutableRawPointer, doubleType: UnsafeMutableRawPointer
    let sumOp: UnsafeMutableRawPointer

    /// Whether this process was started by an MPI launcher (`mpirun`, `srun` with PMIx) as one of several.
    public static var isLaunchedByMPI: Bool {
        for key in ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"] {
            if let v = getenv(key), let n = Int(String(cString: v)), key == "PMIX_RANK" || n > 1 { return true }
        }
        return false
    }

    /// Initializes MPI (once per process). Throws when no Open MPI library can be loaded.
    public init() throws {
        var handle: UnsafeMutableRawPointer?
        // RTLD_GLOBAL: Open MPI's own plugins resolve symbols of libmpi.
        for path in ["libmpi.so.40", "libmpi.so"] where handle == nil { handle = dlopen(path, RTLD_NOW | RTLD_GLOBAL) }
        guard let handle else {
            throw DistributedError.unavailable("started under mpirun, but no Open MPI library (libmpi.so.40) loads; install openmpi-bin")
        }
        func symbol(_ name: String) throws -> UnsafeMutableRawPointer {
            guard let s = dlsym(handle, name) else { throw DistributedError.unavailable("libmpi has no '\(name)' (only Open MPI is supported)") }
            return s
        }
        let initialize = unsafeBitCast(try symbol("MPI_Init"), to: InitFunction.self)
        let commRank = unsafeBitCast(try symbol("MPI_Comm_rank"), to: CommQuery.self)
        let commSize = unsafeBitCast(try symbol("MPI_Comm_size"), to: CommQuery.self)
        allreduce = unsafeBitCast(try symbol("MPI_Allreduce"), to: AllreduceFunction.self)
        finalize = unsafeBitCast(try symbol("MPI_Finalize"), to: FinalizeFunction.self)
        world = try symbol("ompi_mpi_comm_world")
        floatType = try symbol("ompi_mpi_float")
        doubleType = try symbol("ompi_mpi_double")
        sumOp = try symbol("ompi_mpi_op_sum")
        guard initialize(nil, nil) == 0 else { throw DistributedError.failed("MPI_Init failed") }
        var r: Int32 = 0, s: Int32 = 0
        _ = commRank(world, &r)
        _ = commSize(world, &s)
        rank = Int(r)
        size = Int(s)
    }

    deinit { _ = finalize() }

    /// MPI counts are 32-bit: large arrays go in slices.
    func sum(_ base: UnsafeMutableRawPointer, count: Int, elementSize: Int, type: UnsafeMutableRawPointer) throws {
        let inPlace = UnsafeRawPointer(bitPattern: 1)  // Open MPI's MPI_IN_PLACE
        var start = 0
        while start < count {
            let n = min(count - start, 1 << 30)
            guard allreduce(inPlace, base + start * elementSize, Int32(n), type, sumOp, world) == 0 else {
                throw DistributedError.failed("MPI_Allreduce failed")
            }
            start += n
        }
    }

    public func sum(_ values: inout [Float]) throws {
        try values.withUnsafeMutableBytes { try sum($0.baseAddress!, count: $0.count / 4, elementSize: 4, type: floatType) }
    }

    public func sum(_ values: inout [Double]) throws {
        try values.withUnsafeMutableBytes { try sum($0.baseAddress!, count: $0.count / 8, elementSize: 8, type: doubleType) }
    }
}
