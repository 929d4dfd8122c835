package com.glint;

import java.io.FileDescriptor;

/**
 * Glint, the on-device LLM runtime: load a {@code .glint} model, open sessions on it,
 * generate with streaming, cancel from any thread. The native library is {@code libglint}
 * ({@code System.loadLibrary("glint")}: {@code -Djava.library.path=...} on a desktop JVM,
 * {@code jniLibs/<abi>/libglint.so} in an Android app).
 *
 * <p>Every failure is a {@link GlintException} with a {@link GlintException#code() code};
 * native errors and panics never crash the JVM.
 */
public final class Glint {
    private Glint() {}

    /** Activations of the matrix products. */
    public enum Precision {
        /** int8 activations except in the first two blocks: the runtime's default. */
        MIXED,
        /** f32 activations: matches the f32 reference to rounding. */
        EXACT,
        /** int8 activations and integer dot products everywhere: fastest. */
        INT8
    }

    /** Element type of the sessions' KV caches. */
    public enum KvType {
        /** f16: half the bytes of f32. The default. */
        F16,
        /** f32: exact. */
        F32,
        /** int8 per 32-element block: 56% of f16. */
        INT8
    }

    /** Which backend runs the model. */
    public enum Backend {
        /**
         * In a library built with the {@code gpu} feature: a hardware GPU that passed its
         * self-test (run once per adapter and driver, the verdict kept in
         * {@link Options#gpuCacheDir}), else the CPU. Without it: the CPU.
         */
        AUTO,
        /** The CPU. */
        CPU,
        /**
         * The GPU (Vulkan), without a self-test; {@link GlintException#NO_GPU} where there is
         * none or the library was built without the {@code gpu} feature.
         */
        GPU
    }

    /** How a model is loaded; the defaults are good. */
    public static final class Options {
        /** CPU threads in all (the caller's included); 0: one per core. */
        public int threads = 0;
        /** Activations of the matrix products. */
        public Precision precision = Precision.MIXED;
        /** Element type of the sessions' KV caches. */
        public KvType kvType = KvType.F16;
        /** The backend. */
        public Backend backend = Backend.AUTO;
        /**
         * Most bytes the model and a session on it may hold resident (weights, KV cache,
         * activations), checked by {@link Model#session}; 0: no limit.
         */
        public long memBudget = 0;
        /**
         * A folder private to the app (e.g. {@code context.getCacheDir()}) where the GPU
         * backend keeps its compiled kernels and AUTO its self-test verdicts; null: none.
         */
        public String gpuCacheDir = null;
        /** Told the fraction loaded, on the loading thread; may be null. */
        public ProgressListener progress = null;
    }

    /** The native library's version. */
    public static String version() {
        return Native.version();
    }

    /**
     * Loads a model file (memory-mapped: only its header is read now). Blocks: call it off
     * the UI thread.
     *
     * @param options null for the defaults
     */
    public static Model load(String path, Options options) {
        Options o = options != null ? options : new Options();
        return new Model(Native.loadPath(path, o.threads, o.precision.ordinal(),
                o.kvType.ordinal(), o.backend.ordinal(), o.memBudget, o.gpuCacheDir, o.progress));
    }

    /**
     * Loads a model stored at {@code offset}, {@code length} bytes, in an open file: a model
     * inside an APK ({@code AssetFileDescriptor}) or a {@code ParcelFileDescriptor}. The
     * descriptor is duplicated: the caller may close it afterwards.
     */
    public static Model load(FileDescriptor fd, long offset, long length, Options options) {
        Options o = options != null ? options : new Options();
        return new Model(Native.loadFd(fd, offset, length, o.threads, o.precision.ordinal(),
                o.kvType.ordinal(), o.backend.ordinal(), o.memBudget, o.gpuCacheDir, o.progress));
    }
}
