package com.glint;

/**
 * One conversation: a context, its KV cache and the chat history. One generation at a
 * time (another thread gets {@link GlintException#BUSY}); {@link #cancel()} and
 * {@link #close()} may be called from any thread while it runs.
 */
public final class Session implements AutoCloseable {
    private volatile long handle;

    Session(long handle) {
        this.handle = handle;
    }

    private long handle() {
        long h = handle;
        if (h == 0) {
            throw new GlintException(GlintException.INVALID_HANDLE, "the session is closed");
        }
        return h;
    }

    /**
     * Continues the context with {@code prompt} and generates, calling {@code callback} on
     * this thread with each piece of text. Blocks until done: call it off the UI thread.
     *
     * @param params null for the model's recommended settings
     * @param callback required; returns false to stop; if it throws, generation stops and
     *     a {@link GlintException} with the exception as its cause is thrown
     */
    public Stats generate(String prompt, GenerateParams params, TokenCallback callback) {
        return run(false, prompt, params, callback);
    }

    /**
     * As {@link #generate}, with {@code message} as a user turn: the session keeps the chat
     * history and renders it with the model's chat template; the reply joins the history.
     */
    public Stats chat(String message, GenerateParams params, TokenCallback callback) {
        return run(true, message, params, callback);
    }

    private Stats run(boolean chat, String prompt, GenerateParams params, TokenCallback cb) {
        GenerateParams p = params != null ? params : new GenerateParams();
        double[] s = Native.generate(handle(), chat, prompt, p.maxTokens, p.temperature, p.topK,
                p.topP, p.minP, p.repeatPenalty, p.seed, cb);
        return new Stats(s);
    }

    /**
     * Stops the generation running on this session within one decode step, or, if none
     * runs, the next one to start. Any thread; never blocks; does nothing once closed.
     */
    public void cancel() {
        long h = handle;
        if (h != 0) {
            Native.cancel(h);
        }
    }

    /** Forgets the context and the chat history. */
    public void reset() {
        Native.reset(handle());
    }

    /**
     * Frees the session; a generation running on another thread is cancelled and returns
     * normally. A second close does nothing.
     */
    @Override
    public void close() {
        long h;
        synchronized (this) {
            h = handle;
            handle = 0;
        }
        if (h != 0) {
            Native.sessionFree(h);
        }
    }
}
