"use strict";
(function () {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const answer = await SB.api("POST", "/" + form.dataset.area + "/login", {
        email: form.email.value, password: form.password.value,
      });
      window.location.assign(answer.redirect);
    } catch (e) {
      const key = e.code === "wrong_portal" ? "wrong_portal" : e.code === "rate_limited" ? "too_many_attempts" : "login_failed";
      error.textContent = SB.t(key);
      error.hidden = false;
      button.disabled = false;
      form.password.select();
    }
  });
})();
