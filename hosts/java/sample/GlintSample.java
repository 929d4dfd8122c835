import com.glint.GenerateParams;
import com.glint.Glint;
import com.glint.Model;
import com.glint.Session;
import com.glint.Stats;

/**
 * A host in Java, no build tool needed (see hosts/README.md):
 * java -Djava.library.path=target/release -cp CLASSES GlintSample MODEL [QUESTION]
 * Streams an answer, then cancels a second request halfway from another thread, and
 * prints the statistics of both.
 */
public final class GlintSample {
    public static void main(String[] args) throws Exception {
        String question = args.length > 1 ? args[1] : "What is the capital of France?";
        Glint.Options options = new Glint.Options();
        options.progress = f -> System.err.printf("loading: %.0f%%%n", f * 100);
        try (Model model = Glint.load(args[0], options); Session session = model.session(0)) {
            Stats first = session.chat(question, GenerateParams.greedy(64), text -> {
                System.out.print(text);
                System.out.flush();
                return true;
            });
            System.out.println();
            System.err.println("stats: " + first);

            // A second request, cancelled from another thread after half its tokens.
            int budget = 32;
            Thread[] canceller = new Thread[1];
            int[] tokens = {0};
            Stats second = session.chat("Now tell me a long story about it.",
                    GenerateParams.greedy(budget), text -> {
                        System.out.print(text);
                        System.out.flush();
                        if (++tokens[0] == budget / 2) {
                            canceller[0] = new Thread(session::cancel);
                            canceller[0].start();
                        }
                        return true;
                    });
            if (canceller[0] != null) {
                canceller[0].join();
            }
            System.out.println();
            System.err.println("stats: " + second);
        }
    }
}
