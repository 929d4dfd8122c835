package com.glint;

/**
 * Every failure of Glint: a {@link #code()} (the C header's {@code glint_status}) and a
 * message. Unchecked, so callbacks and lambdas stay plain.
 */
public class GlintException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** A required argument was null. */
    public static final int NULL_ARGUMENT = 1;
    /** The model or session is closed. */
    public static final int INVALID_HANDLE = 2;
    /** An argument is out of range. */
    public static final int INVALID_ARGUMENT = 3;
    /** The model file could not be opened or mapped. */
    public static final int IO = 4;
    /** The bytes are not a valid model (truncated, corrupt). */
    public static final int BAD_MODEL = 5;
    /** The model or a setting is not supported here. */
    public static final int UNSUPPORTED = 6;
    /** An allocation failed. */
    public static final int OUT_OF_MEMORY = 7;
    /** The prompt does not fit in the session's context. */
    public static final int PROMPT_TOO_LONG = 8;
    /** The model's chat template failed or is missing. */
    public static final int TEMPLATE = 9;
    /** The session is generating on another thread. */
    public static final int BUSY = 10;
    /** A callback threw (the cause) or stopped a load. */
    public static final int CALLBACK = 11;
    /** A bug in Glint (a caught native panic). */
    public static final int INTERNAL = 12;
    /** The session does not fit in the memory budget. */
    public static final int OVER_BUDGET = 13;
    /** The GPU was asked for and there is none (or the library has no GPU support). */
    public static final int NO_GPU = 14;

    private final int code;

    /** An exception of {@code code} (called by the native library too). */
    public GlintException(int code, String message, Throwable cause) {
        super(message, cause);
        this.code = code;
    }

    /** An exception of {@code code} without a cause. */
    public GlintException(int code, String message) {
        this(code, message, null);
    }

    /** The status code. */
    public int code() {
        return code;
    }
}
