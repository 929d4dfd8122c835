package com.glint;

/** Statistics of one generation. */
public final class Stats {
    /** Why a generation ended. */
    public enum StopReason {
        /** The model ended its answer. */
        END_OF_TEXT,
        /** A stop string appeared. */
        STOP_STRING,
        /** {@code maxTokens} were generated. */
        MAX_TOKENS,
        /** The session's context is full. */
        CONTEXT_FULL,
        /** {@link Session#cancel()}, or the callback returned false. */
        CANCELLED
    }

    /** Tokens run through the model as prompt. */
    public final long promptTokens;
    /** Tokens generated. */
    public final long generatedTokens;
    /** Milliseconds from the call to the first generated token. */
    public final double timeToFirstTokenMs;
    /** Prompt tokens per second. */
    public final double prefillTokS;
    /** Generated tokens per second after the first. */
    public final double decodeTokS;
    /** Bytes of KV cache in use at the end. */
    public final long kvBytes;
    /** Why generation ended. */
    public final StopReason stopReason;

    Stats(double[] s) {
        promptTokens = (long) s[0];
        generatedTokens = (long) s[1];
        timeToFirstTokenMs = s[2];
        prefillTokS = s[3];
        decodeTokS = s[4];
        kvBytes = (long) s[5];
        stopReason = StopReason.values()[(int) s[6]];
    }

    @Override
    public String toString() {
        return String.format("%d prompt tokens at %.1f tok/s, %d generated at %.1f tok/s "
                + "(first after %.0f ms), stop: %s", promptTokens, prefillTokS, generatedTokens,
                decodeTokS, timeToFirstTokenMs, stopReason);
    }
}
