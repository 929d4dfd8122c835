package com.glint;

import java.io.FileDescriptor;

/** The native methods (implemented in hosts/src/jni.rs); the public classes wrap them. */
final class Native {
    private Native() {}

    static {
        System.loadLibrary("glint");
    }

    static native String version();

    static native long loadPath(String path, int threads, int precision, int kv, int backend,
            long memBudget, String gpuCacheDir, ProgressListener listener);

    static native long loadFd(FileDescriptor fd, long offset, long length, int threads,
            int precision, int kv, int backend, long memBudget, String gpuCacheDir,
            ProgressListener listener);

    static native void modelFree(long model);

    static native long sessionNew(long model, int context);

    static native void sessionFree(long session);

    static native void cancel(long session);

    static native void reset(long session);

    static native double[] generate(long session, boolean chat, String prompt, int maxTokens,
            float temperature, int topK, float topP, float minP, float repeatPenalty, long seed,
            TokenCallback callback);
}
