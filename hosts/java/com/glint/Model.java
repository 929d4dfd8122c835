package com.glint;

/**
 * A loaded model. Thread-safe: sessions made on any threads share it. Closing it
 * (any thread) leaves its open sessions working; the memory goes with the last of them.
 */
public final class Model implements AutoCloseable {
    private volatile long handle;

    Model(long handle) {
        this.handle = handle;
    }

    private long handle() {
        long h = handle;
        if (h == 0) {
            throw new GlintException(GlintException.INVALID_HANDLE, "the model is closed");
        }
        return h;
    }

    /**
     * A new session with {@code context} positions (at most the model's trained context; 0:
     * the default of 2048, or less to fit the memory budget). Checked against
     * {@link Glint.Options#memBudget} ({@link GlintException#OVER_BUDGET}); its KV cache is
     * allocated now.
     */
    public Session session(int context) {
        return new Session(Native.sessionNew(handle(), context));
    }

    /** Frees the model's handle; a second close does nothing. */
    @Override
    public void close() {
        long h;
        synchronized (this) {
            h = handle;
            handle = 0;
        }
        if (h != 0) {
            Native.modelFree(h);
        }
    }
}
