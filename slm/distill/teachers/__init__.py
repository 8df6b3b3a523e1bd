"""Teachers behind one interface (`slm.distill.teachers.base.Teacher`): recorded, human, local, openai."""
from slm.distill.teachers.base import Reply, Teacher, TeacherFailure
from slm.distill.teachers.openai_api import EndpointConfig, OpenAITeacher
from slm.distill.teachers.recorded import HumanTeacher, RecordedTeacher

__all__ = ["Reply", "Teacher", "TeacherFailure", "EndpointConfig", "OpenAITeacher", "HumanTeacher",
           "RecordedTeacher", "LocalTeacher"]


def __getattr__(name: str):
    if name == "LocalTeacher":  # imports torch and transformers only when asked for
        from slm.distill.teachers.local import LocalTeacher
        return LocalTeacher
    raise AttributeError(name)
