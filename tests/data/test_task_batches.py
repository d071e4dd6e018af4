from scl_cli.data.task_batches import human_answers
from scl_cli.data.vqa_answers import answer_labels


def test_a_generated_answer_is_certain_and_trains_with_full_score() -> None:
    index = {"two": 0, "red": 1, "blue": 2}
    generated = {"question": "what color is the circle?", "answer": "red", "type": "color"}
    assert human_answers(generated) == ["red"] * 10
    assert answer_labels(human_answers(generated), index) == {"1": 1.0}


def test_annotated_answers_keep_their_vqav2_soft_scores() -> None:
    index = {"two": 0, "red": 1, "blue": 2}
    annotated = {"question": "what color?", "answers": [{"answer": "red"}] + [{"answer": "blue"}] * 9}
    assert answer_labels(human_answers(annotated), index) == {"1": 0.3, "2": 1.0}
