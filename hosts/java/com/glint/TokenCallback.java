package com.glint;

/** Receives generated text, on the thread that called generate or chat. */
@FunctionalInterface
public interface TokenCallback {
    /**
     * A piece of generated text (whole characters).
     *
     * @return true to continue, false to stop
     */
    boolean onToken(String text);
}
