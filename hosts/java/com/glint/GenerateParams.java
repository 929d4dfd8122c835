package com.glint;

/**
 * Settings of one generation. NaN (and a negative {@code topK}) keeps the model's
 * recommendation, so {@code new GenerateParams()} is the model's defaults.
 */
public final class GenerateParams {
    /** Most tokens to generate. */
    public int maxTokens = 512;
    /** Softmax temperature; 0: greedy. */
    public float temperature = Float.NaN;
    /** Keep the k most likely tokens; 0: all. */
    public int topK = -1;
    /** Keep the most likely tokens up to this probability mass; 1: all. */
    public float topP = Float.NaN;
    /** Drop tokens less likely than this times the most likely; 0: none. */
    public float minP = Float.NaN;
    /** Penalty on recently seen tokens; 1: off. */
    public float repeatPenalty = Float.NaN;
    /** Seed of the draw: the same seed, prompt and settings give the same text. */
    public long seed = 0;

    /** Greedy decoding (temperature 0) of at most {@code maxTokens} tokens. */
    public static GenerateParams greedy(int maxTokens) {
        GenerateParams p = new GenerateParams();
        p.maxTokens = maxTokens;
        p.temperature = 0;
        return p;
    }
}
