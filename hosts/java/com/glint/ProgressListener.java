package com.glint;

/** Told how far a model load has come, on the loading thread. */
@FunctionalInterface
public interface ProgressListener {
    /** The fraction loaded, from 0 to 1. Throwing stops the load. */
    void onProgress(float fraction);
}
