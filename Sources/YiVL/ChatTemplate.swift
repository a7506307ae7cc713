/// Yi-VL's conversation format (`mm_default` in 01-ai/Yi, folder VL).
public enum YiVLChat {
    public static let systemPrompt =
        "This is a chat between an inquisitive human and an AI assistant. Assume the role of the AI assistant. Read "
        + "all the images carefully, and respond to the human's questions with informative, helpful, detailed "
        + "and polite answers. "
        + "这是一个好奇的人类和一个人工智能助手之"
        + "间的对话。假设你扮演这个AI助手的角色。"
        + "仔细阅读所有的图像，并对人类的问题做出"
        + "信息丰富、有帮助、详细的和礼貌的回答。"
    public static let imagePlaceholder = "<image_placeholder>"
    /// `{system}` and `{question}` are replaced; the prompt is split at the image placeholder and each
    /// piece tokenized on its own.
    public static let template = "{system}\n\n### Human: <image_placeholder>\n{question}\n### Assistant:"
    /// What a follow-up turn appends after the previous `### Assistant:`. Yi's `Conversation.get_prompt`
    /// (style SINGLE, sep "###") writes the system text, "\n\n### ", then each message as
    /// `role + ": " + message + "\n### "` and the open assistant turn as `role + ":"`, so the first turn is
    /// `template` and every later one continues with the previous answer (stripped, stop string removed,
    /// as Yi's cli.py stores it) and the new question:
    /// `{system}\n\n### Human: <image_placeholder>\n{q1}\n### Assistant: {a1}\n### Human: {q2}\n### Assistant:`.
    public static let followUpTemplate = " {answer}\n### Human: {question}\n### Assistant:"
    /// The marker Yi's code puts in input_ids where the image features are spliced in.
    public static let imageTokenIndex = -200
    public static let stopStrings = ["###"]

    public static func prompt(question: String, system: String = systemPrompt) -> String {
        template.replacing("{system}", with: system).replacing("{question}", with: question)
    }
}
